{{/* Names, labels and the derived settings every template shares. */}}

{{- define "consistency-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "consistency-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "consistency-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "consistency-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "consistency-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "consistency-operator.labels" -}}
helm.sh/chart: {{ include "consistency-operator.chart" . }}
{{ include "consistency-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: consistency-operator
{{- end -}}

{{- define "consistency-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "consistency-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "consistency-operator.workerServiceAccountName" -}}
{{- default (printf "%s-worker" (include "consistency-operator.fullname" .)) .Values.worker.serviceAccount.name -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. Argument: dict image, default tag. */}}
{{- define "consistency-operator.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .defaultTag .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches, as a JSON list; [] means every namespace. */}}
{{- define "consistency-operator.watchedNamespaces" -}}
{{- if eq .Values.watch.mode "namespace" -}}
{{- list .Release.Namespace | toJson -}}
{{- else if eq .Values.watch.mode "namespaces" -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the worker ServiceAccount, as a JSON list. */}}
{{- define "consistency-operator.workerNamespaces" -}}
{{- $ns := include "consistency-operator.watchedNamespaces" . | fromJsonArray -}}
{{- if not $ns -}}
{{- $ns = list .Release.Namespace -}}
{{- end -}}
{{- concat $ns .Values.worker.serviceAccount.extraNamespaces | uniq | toJson -}}
{{- end -}}

{{/*
The operator's API rights inside one watched namespace (or cluster-wide in cluster mode): exactly
REQUIRED_PERMISSIONS of operator/consistency_operator/rbac.py, which a test compares with these rules
both ways. Jobs are never deleted by the operator (ownerReferences garbage-collect them with their
campaign); pods are only listed, for a finished Job's termination messages; Secrets are never read.
*/}}
{{- define "consistency-operator.operatorRules" -}}
- apiGroups: ["consistency.dev"]
  resources: ["consistencytrainings"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["consistency.dev"]
  resources: ["consistencytrainings/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
