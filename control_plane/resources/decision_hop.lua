-- The decision hop, Envoy's half (the Python half is extproc/hop.py; the answer format is there).
--
-- Request: buffer the body, POST it with the client's headers to the decision service, then apply
-- the answer: reply to the client, or rewrite the request (body, headers, routing labels) and let
-- the route be picked again (a translated stream's or a fallback chain's route then runs ext_proc on
-- the response).
-- Response: when the decision left a response context, buffer the provider's answer and POST it to
-- the decision service, which returns it in the client's format.
--
-- Fail closed: when the decision service cannot be reached, answers late or answers something
-- malformed, the client gets a 503 in its own API's format and nothing goes upstream.
-- The control plane fills in the @NAMES@ before sending this to Envoy.

local HOP_CLUSTER = "@HOP_CLUSTER@"
local NAMESPACE = "@NAMESPACE@"
local INTERNAL_PREFIX = "@INTERNAL_PREFIX@"
local CONTEXT_LABEL = "@CONTEXT_LABEL@"
local CLUSTER_HEADER = "@CLUSTER_HEADER@"
local ROUTE_HEADER = "@ROUTE_HEADER@"
local ROUTE_LABEL = "@ROUTE_LABEL@"
local TRACEPARENT_LABEL = "@TRACEPARENT_LABEL@"
local ANSWER_HEADERS_LABEL = "answer_headers"
local CACHE_STORE_LABEL = "@CACHE_STORE_LABEL@"
local CACHE_CAP_LABEL = "@CACHE_CAP_LABEL@"
local CACHE_CLUSTER_LABEL = "@CACHE_CLUSTER_LABEL@"
local ENCODING_HEADER = "@ENCODING_HEADER@"
local REQUEST_ID_HEADER = "@REQUEST_ID_HEADER@"
-- The policy's MCP endpoint ("" without mcp:): forwarded on its headers like the batch API.
local MCP_PATH = "@MCP_PATH@"
-- A tool call is one of many in a session, each with the same credentials: the decision to forward
-- it (who the caller is) is reused for this many seconds (policy mcp.decision_reuse; 0: never) by
-- the requests whose headers are the same but for the ones listed, which the decision never reads.
-- Per Envoy worker thread, bounded; a refusal is never reused, nor a request with large headers
-- (the decision service answers those: 431 over its limit).
local MCP_REUSE_S = @MCP_REUSE_S@
local MCP_IGNORED = { @MCP_IGNORED@ }
local MCP_REUSE_MAX_HEADER_BYTES = @MCP_REUSE_MAX_HEADER_BYTES@
local MCP_REUSE_MAX_ENTRIES = 1024
local mcp_decisions = {}
local mcp_decision_count = 0
local TIMEOUT_MS = @TIMEOUT_MS@
-- /decide may wait for an identical request in flight (the response cache's deduplication): the
-- hop stops waiting on its own before this; the bound is for a wedged worker.
local DECIDE_TIMEOUT_MS = @DECIDE_TIMEOUT_MS@
local MAGIC = "ccr1 "
local PREFIX_LENGTH = #INTERNAL_PREFIX
-- Set by the JWT claims filter before this one, which removed the client's copies first
-- (control_plane/resources/jwt.py): a verified token's claims, or why it failed.
local JWT_PREFIX = INTERNAL_PREFIX .. "jwt-"
local SKIPPED = { ["content-length"] = true, ["transfer-encoding"] = true, ["connection"] = true }

-- An error in the client's API format (messages here hold no quote or backslash).
local function error_body(openai, message)
  if openai then
    return '{"error":{"message":"' .. message .. '","type":"server_error","param":null,"code":"ccr_hop_unavailable"}}'
  end
  return '{"type":"error","error":{"type":"api_error","message":"' .. message .. '"}}'
end

local function fail(handle, openai, message)
  handle:respond({ [":status"] = "503", ["content-type"] = "application/json" }, error_body(openai, message))
end

-- "ccr1 <action>\n<op>\t<name>\t<value>\n...\n\n<payload>" -> action, ops, payload (nil if malformed)
local function parse(answer)
  if answer == nil or string.sub(answer, 1, #MAGIC) ~= MAGIC then
    return nil
  end
  local cut = string.find(answer, "\n\n", 1, true)
  if cut == nil then
    return nil
  end
  local head = string.sub(answer, 1, cut)
  local first = string.find(head, "\n", 1, true)
  local action = string.sub(head, #MAGIC + 1, first - 1)
  local ops = {}
  for op, name, value in string.gmatch(string.sub(head, first + 1), "([^\t\n]*)\t([^\t\n]*)\t([^\n]*)\n") do
    ops[#ops + 1] = { op, name, value }
  end
  return action, ops, string.sub(answer, cut + 2)
end

-- A 503 here is Envoy's own: the worker refused the connection or closed it before answering (it
-- was stopped or killed; `up` replaces it). The decision is pure, so asking again is safe, and the
-- cluster's outlier detection ejects that worker, but on a busy machine not always before the next
-- call picks it again: six attempts (a refused connection costs microseconds).
-- A timeout (504) is not retried: it would double the wait of a request that already waited.
local CALL_ATTEMPTS = 6

local function call(handle, path, headers, body, timeout_ms)
  headers[":method"] = "POST"
  headers[":path"] = path
  headers[":authority"] = "ccr-hop"
  for _ = 1, CALL_ATTEMPTS do
    local answer_headers, answer = handle:httpCall(HOP_CLUSTER, headers, body, { timeout_ms = timeout_ms, send_xff = false })
    local status = answer_headers and answer_headers[":status"]
    if status == "200" then
      return parse(answer)
    end
    if status ~= "503" then
      return nil
    end
  end
  return nil
end

-- The response cache (extproc/cache): a copy of a 200 answer, as the client got it, goes to /store
-- without holding the answer back (an asynchronous call: the client never waits for the cache).
-- An answer that is not stored (not a 200, too large) is reported with its status and no body: the
-- identical requests waiting for it (in-flight deduplication) then stop waiting at once.
local function send_to_cache(handle, cluster, token, status, content_type, raw)
  local headers = {
    [":method"] = "POST",
    [":path"] = "/store",
    [":authority"] = "ccr-hop",
    ["x-ccr-cache-token"] = token,
    ["x-ccr-status"] = status,
    ["content-type"] = content_type,
  }
  handle:httpCall(cluster, headers, raw, { timeout_ms = TIMEOUT_MS, asynchronous = true, send_xff = false })
end

local TOO_LARGE = "413"

-- A stream is copied chunk by chunk as it passes (never held back); a JSON answer is whole anyway.
-- Past ``cap`` bytes nothing is stored.
local function store_answer(handle, cluster, token, cap, content_type)
  local raw
  if string.find(content_type, "text/event-stream", 1, true) ~= nil then
    local parts, size = {}, 0
    for chunk in handle:bodyChunks() do
      local length = chunk:length()
      size = size + length
      if length > 0 and size <= cap then
        parts[#parts + 1] = chunk:getBytes(0, length)
      end
    end
    if size > cap then
      return send_to_cache(handle, cluster, token, TOO_LARGE, "", "")
    end
    raw = table.concat(parts)
  else
    local body = handle:body(true)
    if body == nil or body:length() > cap then
      return send_to_cache(handle, cluster, token, TOO_LARGE, "", "")
    end
    raw = body:getBytes(0, body:length())
  end
  send_to_cache(handle, cluster, token, "200", content_type, raw)
end

-- The batch API's paths (extproc/request_steps.py BATCH_ENDPOINTS), each and everything below it.
local BATCH_PATHS = { "/v1/messages/batches", "/v1/files", "/v1/batches" }

local function is_batch_path(path)
  path = string.match(path, "^[^?]*")
  for _, prefix in ipairs(BATCH_PATHS) do
    if path == prefix or string.sub(path, 1, #prefix + 1) == prefix .. "/" then
      return true
    end
  end
  return false
end

-- The MCP endpoint (extproc/request_steps.py): its path exactly, any query.
local function is_mcp_path(path)
  return MCP_PATH ~= "" and string.match(path, "^[^?]*") == MCP_PATH
end

-- The key of a request's reusable MCP decision: every header the decision may read, in order; nil
-- when its headers are too large to reuse a decision for.
local function mcp_reuse_key(forwarded)
  local names = {}
  local size = 0
  for name, value in pairs(forwarded) do
    size = size + #name + #value + 4
    if not MCP_IGNORED[name] then
      names[#names + 1] = name
    end
  end
  if size > MCP_REUSE_MAX_HEADER_BYTES then
    return nil
  end
  table.sort(names)
  local parts = {}
  for i, name in ipairs(names) do
    parts[i] = name .. "\0" .. forwarded[name]
  end
  return table.concat(parts, "\0")
end

local function reused_mcp_decision(key)
  local entry = mcp_decisions[key]
  if entry ~= nil and entry.until_s >= os.time() then
    return entry.ops
  end
  return nil
end

local function keep_mcp_decision(key, ops)
  if mcp_decision_count >= MCP_REUSE_MAX_ENTRIES then
    mcp_decisions = {}
    mcp_decision_count = 0
  end
  if mcp_decisions[key] == nil then
    mcp_decision_count = mcp_decision_count + 1
  end
  -- os.time() counts whole seconds: the decision holds for at most MCP_REUSE_S seconds (at least
  -- MCP_REUSE_S - 1).
  mcp_decisions[key] = { until_s = os.time() + MCP_REUSE_S - 1, ops = ops }
end

local function on_request(handle)
  local headers = handle:headers()
  local forwarded = {}
  local internal = {}
  for name, value in pairs(headers) do
    if string.sub(name, 1, PREFIX_LENGTH) == INTERNAL_PREFIX then
      internal[#internal + 1] = name -- never trusted from a client
      if name == ENCODING_HEADER or string.sub(name, 1, #JWT_PREFIX) == JWT_PREFIX then
        forwarded[name] = value -- set by Envoy's filters, not the client: what was decoded, JWT claims
      end
    elseif name == ":path" then
      forwarded["x-ccr-hop-path"] = value
    elseif name == ":method" then
      forwarded["x-ccr-hop-method"] = value
    elseif name == ":authority" then
      forwarded["x-ccr-hop-authority"] = value -- the host the client called (RFC 9728 metadata URLs)
    elseif string.sub(name, 1, 1) ~= ":" and not SKIPPED[name] then
      forwarded[name] = value
    end
  end
  for _, name in ipairs(internal) do
    headers:remove(name)
  end
  local path = forwarded["x-ccr-hop-path"] or ""
  local batch = is_batch_path(path)
  local openai = string.find(path, "chat/completions", 1, true) ~= nil
    or (batch and string.find(path, "/v1/messages/", 1, true) == nil)
  local body = handle:body(true)
  local raw = ""
  -- A batch API or MCP request is decided by its headers alone (authentication): its body, up to
  -- the whole limit, is not copied to the decision service.
  local mcp = is_mcp_path(path)
  if body:length() > 0 and not batch and not mcp then
    raw = body:getBytes(0, body:length())
  end
  local reuse_key = nil
  if MCP_REUSE_S > 0 and mcp then
    reuse_key = mcp_reuse_key(forwarded)
  end
  local action, ops, payload
  local reused = reuse_key and reused_mcp_decision(reuse_key)
  if reused then
    action, ops, payload = "forward", reused, ""
  else
    action, ops, payload = call(handle, "/decide", forwarded, raw, DECIDE_TIMEOUT_MS)
    if reuse_key and action == "forward" and payload == "" then
      keep_mcp_decision(reuse_key, ops)
    end
  end
  if action == nil then
    return fail(handle, openai, "the gateway decision service is unavailable")
  end
  -- Handles taken before httpCall yielded are dead now: take them again.
  headers = handle:headers()
  local metadata = handle:streamInfo():dynamicMetadata()
  if action == "reply" then
    local reply = { [":status"] = "500" }
    for _, op in ipairs(ops) do
      if op[1] == "status" then
        reply[":status"] = op[2]
      elseif op[1] == "header" then
        reply[op[2]] = op[3]
      elseif op[1] == "label" then
        metadata:set(NAMESPACE, op[2], op[3])
      end
    end
    -- On the catch-all route ext_proc would open a stream just to see this reply's headers: a
    -- route of the cluster header has it off (the reply never goes upstream).
    headers:replace(CLUSTER_HEADER, "local_reply")
    handle:clearRouteCache()
    handle:respond(reply, payload)
  elseif action == "forward" then
    -- The body first: if anything below failed, the request must not leave half rewritten. No
    -- payload: the client's body goes on as it is.
    if payload ~= "" then
      handle:body(true):setBytes(payload)
    end
    local answer_headers = nil
    for _, op in ipairs(ops) do
      if op[1] == "set" then
        headers:replace(op[2], op[3])
      elseif op[1] == "answer" then
        answer_headers = answer_headers or {}
        answer_headers[op[2]] = op[3]
      elseif op[1] == "remove" then
        headers:remove(op[2])
      elseif op[1] == "label" then
        metadata:set(NAMESPACE, op[2], op[3])
        if op[2] == CONTEXT_LABEL then
          -- /respond will be called: its log lines name the request by Envoy's id.
          metadata:set(NAMESPACE, REQUEST_ID_HEADER, forwarded[REQUEST_ID_HEADER] or "")
        end
      end
    end
    if answer_headers ~= nil then
      metadata:set(NAMESPACE, ANSWER_HEADERS_LABEL, answer_headers)
    end
    handle:clearRouteCache()
  else
    return fail(handle, openai, "the gateway decision service answered something it cannot apply")
  end
end

local function on_response(handle)
  local labels = handle:streamInfo():dynamicMetadata():get(NAMESPACE)
  if labels == nil then
    return -- not decided by the hop (answered by ext_proc, or by Envoy itself)
  end
  local headers = handle:headers()
  local answer_headers = labels[ANSWER_HEADERS_LABEL] -- the key's rate-limit headers, the trace id
  if answer_headers ~= nil then
    for name, value in pairs(answer_headers) do
      headers:replace(name, value)
    end
  end
  local route = labels[ROUTE_LABEL]
  if route == nil then
    return -- a fallback chain's: ext_proc names the route of the attempt that answered
  end
  headers:replace(ROUTE_HEADER, route .. "; attempts=" .. (headers:get("x-envoy-attempt-count") or "1"))
  local cache_cluster = labels[CACHE_CLUSTER_LABEL] or HOP_CLUSTER -- the deciding worker's hop
  local store = labels[CACHE_STORE_LABEL] -- the response cache's token: a 200 answer goes to /store
  if store ~= nil and headers:get(":status") ~= "200" then
    send_to_cache(handle, cache_cluster, store, headers:get(":status") or "0", "", "")
    store = nil
  end
  local context = labels[CONTEXT_LABEL]
  if context == nil then
    if store ~= nil then -- the provider's answer goes to the client as it is, and a copy to the cache
      local content_type = headers:get("content-type") or ""
      store_answer(handle, cache_cluster, store, tonumber(labels[CACHE_CAP_LABEL]) or 0, content_type)
    end
    return
  end
  local request = {
    [REQUEST_ID_HEADER] = labels[REQUEST_ID_HEADER] or "",
    ["x-ccr-context"] = context,
    ["x-ccr-status"] = headers:get(":status") or "0",
    ["content-type"] = headers:get("content-type") or "",
    -- The decision's span (Envoy replaces it with its own call's when it sampled the request).
    ["traceparent"] = labels[TRACEPARENT_LABEL],
  }
  local body = handle:body(true) -- waits for the whole answer: handles taken before are dead after
  local raw = ""
  if body:length() > 0 then
    raw = body:getBytes(0, body:length())
  end
  local action, ops, payload = call(handle, "/respond", request, raw, TIMEOUT_MS)
  headers = handle:headers()
  if action ~= "response" then
    headers:replace(":status", "502")
    headers:replace("content-type", "application/json")
    payload = error_body(labels["client_api"] == "openai", "the gateway decision service could not translate the answer")
    ops = {}
  end
  for _, op in ipairs(ops) do
    if op[1] == "status" then
      headers:replace(":status", op[2])
    elseif op[1] == "header" then
      headers:replace(op[2], op[3])
    end
  end
  handle:body(true):setBytes(payload)
  headers:replace("content-length", tostring(#payload))
  if store ~= nil then
    local status = headers:get(":status") or "0"
    if status == "200" and #payload > (tonumber(labels[CACHE_CAP_LABEL]) or 0) then
      send_to_cache(handle, cache_cluster, store, TOO_LARGE, "", "")
    elseif status == "200" then
      send_to_cache(handle, cache_cluster, store, status, headers:get("content-type") or "", payload)
    else
      send_to_cache(handle, cache_cluster, store, status, "", "")
    end
  end
end

-- A script error must not let a request through undecided or half rewritten: answer 503 instead.
function envoy_on_request(handle)
  local ok, err = pcall(on_request, handle)
  if not ok then
    handle:logErr("decision hop: " .. tostring(err))
    local path = handle:headers():get(":path") or ""
    fail(handle, string.find(path, "chat/completions", 1, true) ~= nil, "the gateway decision hop failed")
  end
end

function envoy_on_response(handle)
  local ok, err = pcall(on_response, handle)
  if not ok then
    handle:logErr("decision hop (response): " .. tostring(err))
  end
end
