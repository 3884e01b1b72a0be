-- Argo CD health of a maas.dev TrainingJob (resource.customizations.health.maas.dev_TrainingJob).
-- Like a batch Job: Progressing while the run goes on, Healthy once it succeeded, Degraded when it
-- failed or stopped reporting progress (Stalled), Suspended while runPolicy.suspend holds it.
-- Only Lua's base and table libraries: Argo CD runs health checks without the string library.
local hs = {status = "Progressing", message = "waiting for the operator to observe the TrainingJob"}
if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

local conditions = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  conditions[condition.type] = condition
end
local function is_true(condition_type)
  return conditions[condition_type] ~= nil and conditions[condition_type].status == "True"
end
local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end

if is_true("Failed") then
  hs.status = "Degraded"
  hs.message = describe(conditions.Failed)
elseif is_true("Succeeded") then
  hs.status = "Healthy"
  hs.message = conditions.Succeeded.message
elseif is_true("Suspended") then
  hs.status = "Suspended"
  hs.message = conditions.Suspended.message
elseif is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = describe(conditions.Stalled)
elseif conditions.Running ~= nil and conditions.Running.status == "False" then
  hs.message = describe(conditions.Running)
else
  hs.message = obj.status.phase or "Pending"
  if obj.status.progress ~= nil and obj.status.progress.summary ~= nil then
    hs.message = hs.message .. ": " .. obj.status.progress.summary
  end
end
return hs
