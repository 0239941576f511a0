-- GET one of the patients bench-0 … bench-(N-1), chosen at random.
-- N comes from the environment (BENCH_PATIENTS).
local n = tonumber(os.getenv("BENCH_PATIENTS") or "1000")

function init(args)
  math.randomseed(os.time())
end

function request()
  return wrk.format("GET", "/fhir/Patient/bench-" .. math.random(0, n - 1))
end
