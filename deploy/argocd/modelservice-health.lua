-- Argo CD health of a maas.dev ModelService (resource.customizations.health.maas.dev_ModelService).
-- Healthy once the spec's model is rolled out and available; Degraded when only a change of the
-- spec (or its TrainingJob) can help: invalid spec, rolled back or failed rollout, crash-looping
-- pods, a failed or mismatching TrainingJob, a failed canary; Missing while the referenced
-- TrainingJob does not exist; Suspended when scaled to zero; Progressing otherwise.
-- Only Lua's base and table libraries: Argo CD runs health checks without the string library.
local hs = {status = "Progressing", message = "waiting for the operator to observe the ModelService"}
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
local function has(condition_type, status, reason)
  local condition = conditions[condition_type]
  return condition ~= nil and condition.status == status and (reason == nil or condition.reason == reason)
end
local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end
local canary = obj.status.canary

if obj.status.phase == "Failed" and conditions.Ready ~= nil then
  hs.status = "Degraded"
  hs.message = describe(conditions.Ready)
elseif has("RolledBack", "True") then
  hs.status = "Degraded"
  hs.message = describe(conditions.RolledBack)
elseif has("Degraded", "True") and not has("Degraded", "True", "InsufficientReplicas") then
  hs.status = "Degraded"
  hs.message = describe(conditions.Degraded)
elseif has("ModelResolved", "False", "TrainingJobFailed") or has("ModelResolved", "False", "ChecksumMismatch") then
  hs.status = "Degraded"
  hs.message = describe(conditions.ModelResolved)
elseif canary ~= nil and canary.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "CanaryFailed: " .. (canary.message or "the canary failed")
elseif has("ModelResolved", "False", "TrainingJobNotFound") then
  hs.status = "Missing"
  hs.message = describe(conditions.ModelResolved)
elseif has("Ready", "False", "ScaledToZero") then
  hs.status = "Suspended"
  hs.message = conditions.Ready.message
elseif has("Ready", "True") and has("Progressing", "False", "RolloutComplete") and has("ModelResolved", "True")
    and not has("Degraded", "True") and (canary == nil or canary.phase ~= "Progressing") then
  hs.status = "Healthy"
  hs.message = conditions.Ready.message
elseif has("Progressing", "True") then
  hs.message = describe(conditions.Progressing)
elseif has("ModelResolved", "False") then
  hs.message = describe(conditions.ModelResolved)
elseif has("Degraded", "True") then
  hs.message = describe(conditions.Degraded)
elseif canary ~= nil and canary.phase == "Progressing" then
  hs.message = "canary: " .. (canary.message or "rolling out")
elseif conditions.Ready ~= nil then
  hs.message = describe(conditions.Ready)
end
return hs
