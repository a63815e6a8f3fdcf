"""The REST locations of every kind the operator reads or writes."""

from __future__ import annotations

from ..api import embedding, finetune, rag
from .client import ResourceType

EMBEDDING_SERVICE = ResourceType(embedding.GROUP, embedding.VERSION, embedding.PLURAL, embedding.KIND)
FINE_TUNE_JOB = ResourceType(finetune.GROUP, finetune.VERSION, finetune.PLURAL, finetune.KIND)
RAG_PIPELINE = ResourceType(rag.GROUP, rag.VERSION, rag.PLURAL, rag.KIND)

CONFIG_MAP = ResourceType("", "v1", "configmaps", "ConfigMap")
SERVICE = ResourceType("", "v1", "services", "Service")
EVENT = ResourceType("", "v1", "events", "Event")
DEPLOYMENT = ResourceType("apps", "v1", "deployments", "Deployment")
HPA = ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PDB = ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
NETWORK_POLICY = ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
SERVICE_MONITOR = ResourceType("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")
JOB = ResourceType("batch", "v1", "jobs", "Job")
CRON_JOB = ResourceType("batch", "v1", "cronjobs", "CronJob")
POD = ResourceType("", "v1", "pods", "Pod")
SECRET = ResourceType("", "v1", "secrets", "Secret")
PVC = ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")

# Children are watched (label app.kubernetes.io/managed-by=llmops-operator) and cached.
CHILDREN: dict[str, ResourceType] = {
    rt.kind: rt
    for rt in (CONFIG_MAP, SERVICE, DEPLOYMENT, HPA, PDB, NETWORK_POLICY, SERVICE_MONITOR, JOB, CRON_JOB, PVC)
}
