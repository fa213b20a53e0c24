-- The Lua side of the Cumulus API (scripting/src/api.rs installs it). It receives the native
-- functions and returns the constructors the host uses; scripts see only the globals it sets.
local native = ...

-- Logging functions (cumulus-compat.md §2.3): the arguments, each through tostring, joined.
local function logger(level)
	return function(...)
		local parts = {}
		for i = 1, select("#", ...) do
			parts[i] = tostring((select(i, ...)))
		end
		native.log(level, table.concat(parts))
	end
end
ERROR, WARN, NOTE, INFO, DEBUG, TRACE =
	logger(1), logger(2), logger(3), logger(4), logger(5), logger(6)

-- A read-only collection: `count`, `:pairs()`, `:ipairs()`, any `extra` methods, and a call
-- to look an item up. The host edits it through the returned `admin` functions.
local function collection(normalize, extra)
	local items, count = {}, 0
	local methods = {}
	for k, f in pairs(extra or {}) do
		methods[k] = f
	end
	function methods:pairs()
		return next, items, nil
	end
	function methods:ipairs()
		local list = {}
		for _, v in pairs(items) do
			list[#list + 1] = v
		end
		return ipairs(list)
	end
	local c = setmetatable({}, {
		__index = function(_, k)
			if k == "count" then
				return count
			end
			return methods[k]
		end,
		__newindex = function()
			error("this collection is read-only", 2)
		end,
		__call = function(_, key)
			if normalize then
				key = normalize(key)
			end
			return items[key]
		end,
	})
	local admin = {}
	function admin.add(key, v)
		if items[key] == nil then
			count = count + 1
		end
		items[key] = v
	end
	-- Removes `key`, or only if it still holds `v` when given (another item may have taken
	-- the key since: a second session with the same peer ID, a publication of another app).
	function admin.remove(key, v)
		if items[key] ~= nil and (v == nil or items[key] == v) then
			count = count - 1
			items[key] = nil
		end
	end
	function admin.get(key)
		return items[key]
	end
	return c, admin
end

-- Client IDs: 64 hex digits (any case), or the raw 32 bytes.
local function client_key(id)
	if type(id) ~= "string" then
		return nil
	end
	if #id == 32 then
		return (id:gsub(".", function(c)
			return string.format("%02x", c:byte())
		end))
	end
	return id:lower()
end

-- An ID as its raw 32 bytes (from 64 hex digits, any case, or the raw bytes); nil otherwise.
local function raw_id(id)
	if type(id) ~= "string" then
		return nil
	end
	if #id == 32 then
		return id
	end
	if #id == 64 and not id:find("%X") then
		return (id:gsub("..", function(h)
			return string.char(tonumber(h, 16))
		end))
	end
end

local clients, clients_admin = collection(client_key)
local publications, publications_admin = collection()
-- Groups by ID, looked up like clients (64 hex digits or the raw 32 bytes), and
-- `groups:join(peerId, groupId)`: a member the server knows of (on another server, say) that
-- newcomers to the group hear of, until `member:release()` (or its application's reload).
local groups, groups_admin = collection(client_key, {
	join = function(_, peer, group)
		local peer_raw, group_raw = raw_id(peer), raw_id(group)
		if peer_raw == nil or group_raw == nil then
			error("groups:join takes a peer ID and a group ID (32 bytes or 64 hex digits)", 2)
		end
		local n = native.groupJoin(peer_raw, group_raw)
		if n == nil then
			return nil
		end
		local released = false
		local member = { id = client_key(peer_raw), rawId = peer_raw }
		function member:release()
			if not released then
				released = true
				native.groupRelease(n)
			end
		end
		return member
	end,
})

-- Methods of the `cumulus` object accept both `cumulus:f(...)` and `cumulus.f(...)`.
local function method(f)
	return function(first, ...)
		if first == cumulus then
			return f(...)
		end
		return f(first, ...)
	end
end

local configs = native.configs
cumulus = setmetatable({
	clients = clients,
	publications = publications,
	groups = groups,
	configs = configs,
	publicAddress = configs.publicAddress,
	toAMF = method(native.toAMF),
	toAMF0 = method(native.toAMF0),
	fromAMF = method(native.fromAMF),
	absolutePath = method(native.absolutePath),
	split = method(native.split),
	sha256 = method(native.sha256),
	md5 = method(native.md5),
	addToBlacklist = method(native.addToBlacklist),
	removeFromBlacklist = method(native.removeFromBlacklist),
}, {
	__index = function(_, k)
		if k == "epochTime" then
			return native.epochTime()
		end
	end,
})

local host = {}

-- The applications' flow writers (`newFlowWriter`) while open, with their session: their
-- `onManage` runs every manage tick. And the last writer number of each session.
local flow_writers = {}
local writer_numbers = {}

-- A client's NetConnection writer, and what ends it (and its flow writers) when the client
-- leaves: after that they send nothing (the session number may serve another client by then).
local function writer(session)
	local alive = true
	local function make(number) -- nil: the NetConnection's own writer
		local open = true
		local w = { reliable = true }
		local function call(name, ...)
			if alive and open then
				native.call(session, number or 0, name, ...)
			end
		end
		function w:writeAMFMessage(name, ...)
			call(name, ...)
		end
		-- The `_result` of the call being handled (inside the client's method; the first write
		-- answers, and a value the method returns then is not sent). A flow writer answers no
		-- call: it does nothing there.
		function w:writeAMFResult(...)
			if alive and number == nil then
				native.result(session, ...)
			end
		end
		-- onStatus on the NetConnection: level "status", code "NetConnection.<code>", the
		-- description, then any further name/value pairs (as Cumulus's FlowWriter).
		function w:writeStatusResponse(code, description, ...)
			local info = { level = "status", code = "NetConnection" }
			if code and code ~= "" then
				info.code = "NetConnection." .. code
			end
			if description and description ~= "" then
				info.description = description
			end
			for i = 1, select("#", ...), 2 do
				local k, v = select(i, ...)
				if k ~= nil then
					info[k] = v
				end
			end
			call("onStatus", info)
		end
		function w:flush() end
		-- A writer on a NetConnection flow of its own (as Cumulus: it answers the client's
		-- NetConnection flow), with an `onManage` of its own.
		function w:newFlowWriter()
			local n = (writer_numbers[session] or 0) + 1
			writer_numbers[session] = n
			local fw = make(n)
			flow_writers[fw] = session
			return fw
		end
		-- A flow writer closes its flow; the NetConnection's own closes the session.
		function w:close()
			if not alive then
				return
			end
			if number == nil then
				native.close(session)
			elseif open then
				open = false
				flow_writers[w] = nil
				native.writerClose(session, number)
			end
		end
		return w
	end
	return make(nil), function()
		alive = false
		for fw, s in pairs(flow_writers) do
			if s == session then
				flow_writers[fw] = nil
			end
		end
		writer_numbers[session] = nil
	end
end

-- The open flow writers and their sessions, for their `onManage`.
function host.flow_writers()
	local list = {}
	for fw, s in pairs(flow_writers) do
		list[#list + 1] = { fw, s }
	end
	return list
end

local detach = setmetatable({}, { __mode = "k" })

-- The fields the server keeps current, read when a script reads them.
local live_fields = {
	ping = native.ping,
	elapsedFromReception = native.elapsedFromReception,
}

function host.client(session, fields)
	local w, kill = writer(session)
	fields.writer = w
	detach[fields] = kill
	return setmetatable(fields, {
		__index = function(_, k)
			local f = live_fields[k]
			if f then
				return f(session)
			end
		end,
	})
end

function host.add_client(client)
	clients_admin.add(client.id, client)
end

function host.remove_client(client)
	clients_admin.remove(client.id, client)
	if detach[client] then
		detach[client]()
		detach[client] = nil
	end
end

-- A QOS object: the last second of a publication or a play, refreshed by the server (one
-- measure per stream: audioQOS and videoQOS are the same object).
local function qos()
	return { lostRate = 0, byteRate = 0, congestionRate = 0, latency = 0, droppedFrames = 0 }
end

-- Cumulus's push API on publication `p` of stream `name` in application `app`: the messages
-- reach its listeners as its publisher's would, while `live()` holds. `flush` has nothing to
-- do (the workers send at the end of every turn).
local function pushes(p, app, name, live)
	function p:pushAudioPacket(time, data, offset)
		if live() then
			native.push(app, name, 0x08, time, data, offset)
		end
	end
	function p:pushVideoPacket(time, data, offset)
		if live() then
			native.push(app, name, 0x09, time, data, offset)
		end
	end
	function p:pushDataPacket(handler, data, offset)
		if live() then
			native.pushData(app, name, handler, data or "", offset)
		end
	end
	function p:flush() end
end

local function always()
	return true
end

-- A publication of stream `name` in application `app` by `client` (nil: by the server).
function host.publication(name, client, app, live)
	local listeners, admin = collection()
	local q = qos()
	local p = {
		name = name,
		publisherId = client and client.id,
		listeners = listeners,
		audioQOS = q,
		videoQOS = q,
	}
	pushes(p, app, name, live or always)
	-- A client's publication: its publisher hears `NetStream.<code>` (when given) and `close`,
	-- and the publication ends (Cumulus's closePublisher).
	function p:close(code, description)
		native.closePublisher(app, name, code and tostring(code) or "", description and tostring(description) or "")
	end
	return p, admin
end

-- The server's own publications made since the host last took them, by stream key.
local made = {}

-- `cumulus:publish(name)`: a publication of the running application, or nil when the name is
-- published already. `close()` ends it (so does the application's unload or reload).
function cumulus.publish(_, name)
	local app = native.publish(tostring(name))
	if app == nil then
		return nil
	end
	local closed = false
	local p, admin = host.publication(name, nil, app, function()
		return not closed
	end)
	function p:close()
		if not closed then
			closed = true
			native.unpublish(app, name)
		end
	end
	made[app .. "/" .. name] = { p, admin }
	return p
end

-- The scripts' sockets (Cumulus's TCPClient, TCPServer and UDPSocket), by number, while open:
-- the host hands them their receptions, so an open socket lives on even when the script drops
-- it (close it, or its application's reload or unload does).
local open_sockets = {}

-- A socket object of number `id`: its `methods`, then its properties (`connected`, `address`,
-- `peerAddress`, `port`, `running`) as the server has them; any field a script sets (its
-- `onReception`, say) is its own.
local function socket_object(id, methods)
	return setmetatable({}, {
		__index = function(_, k)
			local m = methods[k]
			if m ~= nil then
				return m
			end
			return native.socketInfo(id, k)
		end,
	})
end

-- Closes socket `id`: it gets no more receptions.
local function close_socket(id)
	native.socketClose(id)
	open_sockets[id] = nil
end

-- A TCP client: `connect(host, port)` (nil, or the error), `send(data)`, `disconnect()`.
-- As in Cumulus, a disconnection (the script's own too) runs `onDisconnection()`, and
-- connecting a connected client disconnects it first.
local function tcp_client(id, connected)
	local o
	local m = {}
	function m:disconnect()
		if open_sockets[id] == nil then
			return
		end
		close_socket(id)
		local f = rawget(o, "onDisconnection")
		if f then
			f(o)
		end
	end
	function m:connect(host, port)
		m.disconnect(o)
		local err = native.tcpConnect(id, tostring(host), tonumber(port) or 0)
		rawset(o, "error", err)
		if err == nil then
			open_sockets[id] = o
		end
		return err
	end
	function m:send(data)
		local err = native.tcpSend(id, tostring(data))
		if err ~= nil then
			rawset(o, "error", err)
		end
		return err
	end
	o = socket_object(id, m)
	if connected then
		open_sockets[id] = o
	end
	return o
end

-- A TCP server: `start(port)` (whether it listens; `clientHandler(client)` then gets each
-- connection), `stop()`.
local function tcp_server(id)
	local o
	local m = {}
	function m:start(port)
		local ok = native.tcpListen(id, tonumber(port) or 0)
		if ok then
			open_sockets[id] = o
		end
		return ok
	end
	function m:stop()
		close_socket(id)
	end
	o = socket_object(id, m)
	return o
end

-- A UDP socket: `bind(address)` (nil, or the error), `connect(address)`, `send(data[,
-- address])`, `close()`; `onReception(data, address)`.
local function udp_socket(id, broadcast)
	local o
	local m = {}
	function m:bind(address)
		local err = native.udpBind(id, tostring(address), broadcast)
		if err == nil then
			open_sockets[id] = o
		end
		return err
	end
	function m:connect(address)
		native.udpConnect(id, tostring(address), broadcast)
		open_sockets[id] = o
	end
	function m:send(data, address)
		native.udpSend(id, tostring(data), address and tostring(address), broadcast)
		open_sockets[id] = o
	end
	function m:close()
		close_socket(id)
	end
	o = socket_object(id, m)
	return o
end

cumulus.createTCPClient = method(function()
	return tcp_client(native.socketNew(), false)
end)
cumulus.createTCPServer = method(function()
	return tcp_server(native.socketNew())
end)
cumulus.createUDPSocket = method(function(allowBroadcast)
	return udp_socket(native.socketNew(), not not allowBroadcast)
end)

-- `cumulus:sendMail(sender, subject, content, recipient...)`: a mail object whose
-- `onSent()` the script may define runs when it is done, with the mail's `error` nil when the
-- SMTP server took it (and the error as its argument too).
cumulus.sendMail = method(function(sender, subject, content, ...)
	local recipients = {}
	for i = 1, select("#", ...) do
		recipients[i] = tostring((select(i, ...)))
	end
	local id = native.socketNew()
	local mail = {}
	native.sendMail(id, tostring(sender), tostring(subject or ""), tostring(content or ""), recipients)
	open_sockets[id] = mail
	return mail
end)

function host.socket(id)
	return open_sockets[id]
end

function host.forget_socket(id)
	open_sockets[id] = nil
end

-- A connection a server accepted, as a connected TCP client of number `id`.
function host.accepted(id)
	return tcp_client(id, true)
end

-- Takes the publication `cumulus:publish` made for the stream `key`, and its listeners' editor.
function host.take_made(key)
	local m = made[key]
	made[key] = nil
	if m then
		return m[1], m[2]
	end
end

-- NetGroups (digest §1.14): a group has `id` (hex), `rawId`, `size` and `:ipairs()` over its
-- member clients; it is in `cumulus.groups` while it has members.
local group_members = setmetatable({}, { __mode = "k" })

function host.group_join(id, raw, client)
	local g = groups_admin.get(id)
	if g == nil then
		local members, admin = collection()
		g = setmetatable({ id = id, rawId = raw }, {
			__index = function(_, k)
				if k == "size" then
					return members.count
				end
			end,
		})
		function g:ipairs()
			return members:ipairs()
		end
		group_members[g] = admin
		groups_admin.add(id, g)
	end
	group_members[g].add(client, client)
	return g
end

-- Answers the group, or nil when the client was not in it.
function host.group_leave(id, client)
	local g = groups_admin.get(id)
	if g == nil or group_members[g].get(client) == nil then
		return nil
	end
	group_members[g].remove(client)
	if g.size == 0 then
		groups_admin.remove(id, g)
	end
	return g
end

function host.add_publication(name, publication)
	publications_admin.add(name, publication)
end

function host.remove_publication(name, publication)
	publications_admin.remove(name, publication)
end

local ended = setmetatable({}, { __mode = "k" })

-- A listener: its fields are read and written as a table's, and writing receiveAudio,
-- receiveVideo, audioSampleAccess or videoSampleAccess reaches the client's play (every
-- write: the client may have changed its play since), until the play ends.
function host.listener(session, name, client, publication)
	local q = qos()
	local fields = {
		id = client.id,
		client = client,
		publication = publication or { name = name },
		receiveAudio = true,
		receiveVideo = true,
		audioSampleAccess = true,
		videoSampleAccess = true,
		audioQOS = q,
		videoQOS = q,
	}
	local proxy
	proxy = setmetatable({}, {
		__index = fields,
		__newindex = function(_, k, v)
			if k == "receiveAudio" or k == "receiveVideo" then
				v = not not v
				if not ended[proxy] then
					native.receive(session, name, k == "receiveVideo", v)
				end
			elseif k == "audioSampleAccess" or k == "videoSampleAccess" then
				v = not not v
				fields[k] = v
				if not ended[proxy] then
					native.sampleAccess(session, name, fields.audioSampleAccess, fields.videoSampleAccess)
				end
			end
			fields[k] = v
		end,
	})
	return proxy
end

-- The listener's play ended: its switches reach nothing any more.
function host.end_listener(listener)
	ended[listener] = true
end

return host
