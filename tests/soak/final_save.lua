-- tests/soak/final_save.lua — loaded with `rlhost -e` before recipes/rlaif.lua by the
-- soak's last incarnation: when the run finishes, the first model registered with
-- run:model() (the policy) is saved to $SOAK_FINAL_SAVE. That save is the final
-- weights as the process held them, which the soak compares bytewise with the
-- newest checkpoint; the recipe itself stays as users run it.
local dest = assert(os.getenv("SOAK_FINAL_SAVE"), "SOAK_FINAL_SAVE is not set")
local make_run = rl.run
rl.run = function(opts)
  local run = make_run(opts)
  local mt = getmetatable(run)
  if not mt.__soak_wrapped then
    mt.__soak_wrapped = true
    local finish = mt._finish
    mt._finish = function(self)
      local m = not self.finished and self.parts.models[1]
      if m then m[2]:save(dest) end
      return finish(self)
    end
  end
  return run
end
