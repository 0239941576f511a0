-- Search by NHS number for one of the seeded patients.
local n = tonumber(os.getenv("BENCH_PATIENTS") or "1000")

function request()
  local i = math.random(0, n - 1)
  return wrk.format("GET", string.format(
    "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%%7C%010d", 9000000000 + i))
end
