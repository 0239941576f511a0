-- POST a new Patient with a unique NHS-number-shaped identifier per request.
local counter = 0
local thread_id = 0
local template = '{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"%s"}],"name":[{"family":"Bench","given":["Load"]}],"gender":"female","birthDate":"1940-01-01","address":[{"line":["1 High Street"],"city":"Bromley","postalCode":"BR1 1AA"}]}'

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/fhir+json"
  math.randomseed(os.time() + thread_id)
  prefix = string.format("%d%03d", math.random(100, 999), thread_id)
end

function request()
  counter = counter + 1
  local value = string.format("%s%07d", prefix, counter)
  return wrk.format(nil, nil, nil, string.format(template, value))
end
