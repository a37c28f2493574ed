-- Idempotency-Key: the header names the idempotency id of the RPCs that have one, as
-- if the body had named it. The id travels as a query parameter, which the transcoder
-- binds to the request field; the server validates it like any other id.
--
-- A body that names a different id is refused (400): the caller must not be unsure
-- which of the two it sent. Other routes ignore the header.

local ROUTES = {
  -- HTTP method, path pattern (without the query), field (JSON name and proto name)
  {"POST", "^/v1/reservations$", "reservationId", "reservation_id"},
  {"POST", "^/v1/orders$", "orderId", "order_id"},
  {"POST", "^/v1/orders/[^/]+:pay$", "paymentId", "payment_id"},
  {"POST", "^/v1/stock/[^/]+:adjust$", "idempotencyKey", "idempotency_key"},
}

local function percent_encode(text)
  return (text:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

-- The string value of a top-level field of a JSON body, by either of its names.
local function body_value(raw, json_name, proto_name)
  for _, name in ipairs({json_name, proto_name}) do
    local value = raw:match('"' .. name .. '"%s*:%s*"([^"]*)"')
    if value ~= nil then
      return value
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local key = headers:get("idempotency-key")
  if key == nil then
    return
  end
  local method = headers:get(":method")
  local path = headers:get(":path")
  local bare, query = path:match("^([^?]*)%??(.*)$")
  for _, route in ipairs(ROUTES) do
    local verb, pattern, json_name, proto_name = route[1], route[2], route[3], route[4]
    if method == verb and bare:match(pattern) then
      local body = request_handle:body()
      if body ~= nil and body:length() > 0 then
        local named = body_value(body:getBytes(0, body:length()), json_name, proto_name)
        if named ~= nil and named ~= key then
          request_handle:respond(
            {[":status"] = "400"},
            "Idempotency-Key " .. key .. " differs from " .. json_name .. " " .. named
              .. " in the body")
          return
        end
      end
      -- The header handle from before body() is gone once the body was waited for.
      local separator = (query == "") and "?" or "&"
      request_handle:headers():replace(
        ":path", path .. separator .. json_name .. "=" .. percent_encode(key))
      return
    end
  end
end
