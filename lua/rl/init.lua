-- rl: the one table recipes use. It merges the C primitives (rl.core, rl.json, and
-- the modules later issues add) with the policy helpers written in Lua.
local core = require "rl.core"

local rl = {}
for k, v in pairs(core) do rl[k] = v end
rl.json = require "rl.json"
rl.config = require("rl.config").config

return rl
