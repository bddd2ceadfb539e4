-- wrk script for the load benchmark: rotates UIDs so that exactly 1 request in 5 (20%)
-- carries a UID in the gray range 10000000-10499999. 70% send the UID in the
-- `xdw-kefu-uid` header, 30% in a `xdw-kefu-uid` cookie among other cookies (the
-- console's case). Requests are pre-built in init() so that request() costs wrk almost
-- nothing and every proxy sees the same sequence.
local reqs = {}
local n = 1000
local i = 0

local seed = 12345
local function rnd(m)            -- small LCG: deterministic, same sequence everywhere
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % m
end

function init(args)
  local path = args[1] or "/chat/send"
  for k = 1, n do
    local uid
    if k % 5 == 0 then
      uid = 10000000 + rnd(500000)          -- gray range
    else
      uid = 10500000 + rnd(89500000)        -- 10500000..99999999: stable
    end
    local headers = { ["User-Agent"] = "wrk-graylane-bench", ["Accept"] = "*/*" }
    if k % 10 < 7 then
      headers["xdw-kefu-uid"] = tostring(uid)
      headers["xdw-app-version"] = "5.3.1"
    else
      headers["Cookie"] = "lang=zh-CN; accessToken=eyJhbGciOiJIUzI1NiJ9.e30.c2ln; xdw-kefu-uid="
        .. tostring(uid) .. "; theme=dark"
    end
    reqs[k] = wrk.format("GET", path, headers)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end
