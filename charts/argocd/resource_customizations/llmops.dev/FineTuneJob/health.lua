-- Argo CD health of an llmops.dev/v1alpha1 FineTuneJob.
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

local phase = status.phase
local succeeded = condition("Succeeded")
local progressing = condition("Progressing")
local degraded = condition("Degraded")

-- A failed run, or a spec or child the operator cannot apply.
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(succeeded, status.message or "the run failed")
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.output ~= nil then
    hs.message = text(succeeded, "the model is at " .. status.output)
  else
    hs.message = text(succeeded, "the run succeeded")
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(progressing, "suspended")
  return hs
end

if phase == "Running" or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = phase
  local progress = status.progress
  if progress ~= nil and progress.step ~= nil then
    hs.message = hs.message .. ", step " .. tostring(progress.step)
    if progress.totalSteps ~= nil then
      hs.message = hs.message .. "/" .. tostring(progress.totalSteps)
    end
  end
  local why = text(progressing, nil)
  if why ~= nil then
    hs.message = hs.message .. ": " .. why
  end
  return hs
end

hs.status = "Progressing"
hs.message = text(progressing, "Waiting for the operator to report a phase")
return hs
