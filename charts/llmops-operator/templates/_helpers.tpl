{{/* The chart name, or nameOverride. */}}
{{- define "llmops-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, else <release>-<name> (just the release name when it already
contains the chart name). Truncated to 63 characters (DNS label).
*/}}
{{- define "llmops-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmops-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "llmops-operator.labels" -}}
helm.sh/chart: {{ include "llmops-operator.chart" . }}
{{ include "llmops-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmops
{{- end }}

{{/* Labels that select the operator's pod (immutable in the Deployment's selector). */}}
{{- define "llmops-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmops-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmops-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmops-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, else repository:tag (default: appVersion). */}}
{{- define "llmops-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The metrics Service's name; the ServiceMonitor's job label and the alerts use it. */}}
{{- define "llmops-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "llmops-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fails rendering on combinations the schema cannot express clearly. */}}
{{- define "llmops-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the operator can only be granted access to the namespaces it watches" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}

{{/*
The namespaced permissions, exactly what the operator's code sends (operator/llmops_operator:
kube/resources.py, runtime/controller.py, runtime/events.py, reconcilers/*.py). Bound by a
ClusterRole in cluster scope, by a Role in each watched namespace in namespaced scope.
*/}}
{{- define "llmops-operator.namespacedRules" -}}
# Its three kinds: kopf watches them (initial LIST + WATCH); an EmbeddingService that serves a
# fine-tune GETs its FineTuneJob.
- apiGroups: ["llmops.dev"]
  resources: ["embeddingservices", "ragpipelines"]
  verbs: ["list", "watch"]
- apiGroups: ["llmops.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch"]
# Status: merge patches on /status only (never the user's spec).
- apiGroups: ["llmops.dev"]
  resources: ["embeddingservices/status", "ragpipelines/status", "finetunejobs/status"]
  verbs: ["patch"]
# A RAGPipeline's finalizer (llmops.dev/drop-collection): a merge patch of metadata.finalizers.
- apiGroups: ["llmops.dev"]
  resources: ["ragpipelines"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion: clusters running the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) check this.
- apiGroups: ["llmops.dev"]
  resources: ["embeddingservices/finalizers", "ragpipelines/finalizers", "finetunejobs/finalizers"]
  verbs: ["update"]
# The children (labelled app.kubernetes.io/managed-by=llmops-operator): a LIST to fill the cache,
# a WATCH to keep it, server-side apply (PATCH; the API server also checks "create" when the apply
# creates the object), and DELETE of children no longer wanted. ConfigMaps also: GET of a
# RAGPipeline's source ConfigMaps and prompt template (any ConfigMap the user names).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Only used when the Prometheus Operator's CRD is installed (found by discovery).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Pods: listed by job-name label, for the termination messages of ingestion and trainer pods and
# the trainer pod's IP (progress). Read only.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Secrets: GET only, the one a RAGPipeline names in vectorStore.milvus.secretRef (its Milvus token).
# No list or watch: the operator cannot enumerate Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on transitions (Ready, Degraded, Succeeded, CollectionDropFailed...): create only.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cluster-scoped reads, needed in both scopes: kopf lists and watches CRDs to notice API changes
(e.g. the ServiceMonitor CRD installed after the operator started); with a namespace list it also
lists and watches Namespaces. Discovery (/api, /apis) needs no grant: the built-in
system:discovery role allows it to every authenticated user.
*/}}
{{- define "llmops-operator.clusterScopedRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
