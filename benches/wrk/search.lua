-- Search by NHS number for one of the seeded patients (numbers as the
-- bench's nhs_number(i) makes them).
local n = tonumber(os.getenv("BENCH_PATIENTS") or "1000")

-- An NHS number with a valid Modulus 11 check digit from a 9-digit stem: the
-- stem itself, or the next one when its check value would be 10.
local function nhs_number(stem)
  for _, s in ipairs({stem, stem + 1}) do
    local digits = string.format("%09d", s)
    local sum = 0
    for k = 1, 9 do
      sum = sum + tonumber(digits:sub(k, k)) * (11 - k)
    end
    local check = (11 - sum % 11) % 11
    if check < 10 then
      return digits .. check
    end
  end
end

function request()
  local i = math.random(0, n - 1)
  return wrk.format("GET", string.format(
    "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%%7C%s", nhs_number(900000000 + 2 * i)))
end
