-- The root application of the sample www/ that `updraft` serves by default
-- (rtmfp://host/). It is a Cumulus application: the same file runs on CumulusServer.
--
-- Every directory of www/ that holds a main.lua is an application: a client connecting to
-- rtmfp://host/live reaches www/live/main.lua, which inherits what this file defines. A
-- client of an application that does not exist gets NetConnection.Connect.InvalidApp. Edit
-- this file while the server runs: the next connection runs the new version.

function onStart(path)
	NOTE("application '", path, "' started")
end

function onConnection(client, ...)
	INFO("connection from ", client.address, " to '", client.path, "'")

	-- NetConnection.call("echo", responder, ...) answers its arguments.
	function client:echo(...)
		return ...
	end

	-- NetConnection.call("chat", null, text) sends onChat(text, id) to every client.
	function client:chat(text)
		for _, other in cumulus.clients:pairs() do
			other.writer:writeAMFMessage("onChat", text, client.id)
		end
	end

	-- Members added to the NetConnection.Connect.Success info object.
	return { server = "updraft", clients = cumulus.clients.count + 1 }
end

function onDisconnection(client)
	INFO("disconnection of ", client.address)
end

function onPublish(client, publication)
	INFO(client.address, " publishes '", publication.name, "'")
end
