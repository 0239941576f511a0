-- POST a new Patient with a valid NHS number (Modulus 11), a new one per request.
local counter = 0
local thread_id = 0
local template = '{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"%s"}],"name":[{"family":"Bench","given":["Load"]}],"gender":"female","birthDate":"1940-01-01","address":[{"line":["1 High Street"],"city":"Bromley","postalCode":"BR1 1AA"}]}'

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

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/fhir+json"
  math.randomseed(os.time() + thread_id)
  -- Each thread counts up from its own stem, two at a time.
  base = 100000000 + thread_id * 50000000 + math.random(0, 1000) * 2
end

function request()
  counter = counter + 1
  local value = nhs_number(base + 2 * counter)
  return wrk.format(nil, nil, nil, string.format(template, value))
end
