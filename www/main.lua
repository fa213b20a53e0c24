-- The root application of the sample www/ that `updraft` serves by default.
--
-- Every directory of www/ that holds a main.lua is an application: a client connecting to
-- rtmfp://host/live reaches www/live/main.lua, and a client of an application that does not
-- exist gets NetConnection.Connect.InvalidApp. The root application (rtmfp://host/) always
-- exists.
--
-- Lua applications (the Cumulus API: onConnection, onDisconnection, client methods, ...)
-- are run by a later version of Updraft; this file is what they will extend.

function onConnection(client, ...)
	INFO("connection from ", client.address)
end
