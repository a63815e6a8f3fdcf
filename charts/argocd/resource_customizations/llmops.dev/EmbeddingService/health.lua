-- Argo CD health of an llmops.dev/v1alpha1 EmbeddingService.
-- Lua 5.1, base library only: argocd-cm scripts run without the standard libraries
-- (no string, math, os or io) unless resource.customizations.useOpenLibs is set.
local hs = {}
local status = obj.status
local generation = obj.metadata.generation

local function condition(type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function observed()
  if status == nil or status.observedGeneration == nil then
    return false
  end
  if generation == nil then
    return true
  end
  if status.observedGeneration < generation then
    return false
  end
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.observedGeneration ~= nil and c.observedGeneration < generation then
        return false
      end
    end
  end
  return true
end

if not observed() then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation or 1)
  return hs
end

local ready = condition("Ready")
local progressing = condition("Progressing")
local degraded = condition("Degraded")
local rolling = progressing ~= nil and progressing.status == "True"

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end

if ready ~= nil and ready.status == "True" then
  if rolling then
    -- Serving, but a rollout or scale is under way.
    hs.status = "Progressing"
    hs.message = text(progressing, "rolling out")
    return hs
  end
  hs.status = "Healthy"
  hs.message = text(ready, "ready")
  if status.model ~= nil then
    hs.message = hs.message .. "; serving " .. status.model
  end
  return hs
end

if rolling then
  hs.status = "Progressing"
  hs.message = text(progressing, "Progressing")
  return hs
end

if ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = "scaled to zero: " .. text(ready, "replicas is 0")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the operator to report Ready")
return hs
