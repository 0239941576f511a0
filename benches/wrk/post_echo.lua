-- The baseline's POST: the same body the create scenario sends.
local template = '{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"%s"}],"name":[{"family":"Bench","given":["Load"]}],"gender":"female","birthDate":"1940-01-01","address":[{"line":["1 High Street"],"city":"Bromley","postalCode":"BR1 1AA"}]}'
local counter = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/fhir+json"
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(template, string.format("%010d", counter)))
end
