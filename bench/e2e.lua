-- bench/e2e.lua - wrk script for bench/e2e.sh: every request goes to another of ROOMS rooms.
-- wrk ... -s bench/e2e.lua -- MODE ROOMS [LIMIT [ENTITIES]]
--   MODE firebridge: POST alerts (room_id/auth_token fields) to the daemon's REST endpoint, in
--                    CRITICAL/RECOVERY pairs; each CRITICAL opens an incident and the seed's
--                    Multi-Room webhook turns it into one room notification.
--   MODE direct:     POST the same notification straight to hipchat-server (the baseline).
--   LIMIT (per thread, optional): after that many notifications send GET /healthz instead, so
--                    that a known number of deliveries gets queued (the memory measurement).
--   ENTITIES (default 4000): entity ids cycled per thread.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "firebridge"
  rooms = tonumber(args[2] or "1000")
  limit = tonumber(args[3] or "0")
  entities = tonumber(args[4] or "4000")
  n = 0
  bad = 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  n = n + 1
  if mode == "direct" then
    if limit > 0 and n > limit then
      return wrk.format("GET", "/healthz")
    end
    local room = (n * 7 + tid) % rooms
    return wrk.format("POST", "/v2/room/r" .. room .. "/notification?auth_token=bench", headers,
      '{"message":"load ' .. tid .. "-" .. n .. '","color":"red","notify":true,' ..
      '"message_format":"text"}')
  end
  -- pairs: CRITICAL (a new incident: one delivery), then RECOVERY of the same entity (resolves
  -- it, no webhook), over a pool of ENTITIES entities per thread, so the incident table stays
  -- below its 10,000 default and this measures the delivery path, not the table's eviction
  local pair = math.floor((n - 1) / 2)
  if limit > 0 and pair >= limit then
    return wrk.format("GET", "/healthz")
  end
  local critical = n % 2 == 1
  local room = (pair * 7 + tid) % rooms
  local entity = "load-" .. tid .. "-" .. (pair % entities)
  return wrk.format("POST", "/integrations/generic/20131114/alert/" .. "CHANGE-ME-integration-key" ..
    "/load", headers,
    '{"message_type":"' .. (critical and "CRITICAL" or "RECOVERY") .. '","entity_id":"' .. entity ..
    '","entity_display_name":"load ' .. tid .. "-" .. pair .. '","room_id":"r' .. room ..
    '","auth_token":"bench"}')
end

function response(status, headers, body)
  if status >= 300 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
  end
  io.write(string.format("E2E requests=%d non2xx=%d\n", summary.requests, b))
end
