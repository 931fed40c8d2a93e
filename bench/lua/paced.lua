-- wrk script: mix.lua paced to a fixed offered rate (wrk has no rate option and wrk2 is not in Debian).
-- After each response a connection waits a random 0..2*DELAY_MS ms (mean DELAY_MS) before its next
-- request, so C connections offer about C * 1000 / (DELAY_MS + latency) requests/s. Latency is
-- measured by wrk from the write of a request to the end of its response, as in mix.lua.
-- Usage: wrk -s bench/lua/paced.lua -c C URL -- MIXFILE DELAY_MS
-- Everything but the pacing is mix.lua's, loaded from beside this file.

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "mix.lua")

local delay_ms = 10
local mix_init = init

function init(args)
  mix_init(args)
  delay_ms = tonumber(args[2]) or delay_ms
  math.randomseed(os.time())
end

function delay()
  return math.random(0, 2 * delay_ms)
end
