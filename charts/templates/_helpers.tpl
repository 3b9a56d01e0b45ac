{{- define "aads.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "aads.labels" -}}
app.kubernetes.io/name: aads
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "aads.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "aads.isvcAnnotations" -}}
serving.kserve.io/deploymentMode: {{ .Values.kserve.deploymentMode }}
{{- end -}}

{{/* URL of a crop's predictor inside the cluster (KServe names the service <isvc>-predictor). */}}
{{- define "aads.predictorUrl" -}}
{{- $root := index . 0 -}}{{- $crop := index . 1 -}}
{{- if eq $root.Values.adapters.mode "multi" -}}
{{- printf "http://%s-adapters-predictor.%s" (include "aads.fullname" $root) $root.Release.Namespace -}}
{{- else -}}
{{- printf "http://%s-%s-predictor.%s" (include "aads.fullname" $root) $crop $root.Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "aads.canaryUrl" -}}
{{- $root := index . 0 -}}{{- $crop := index . 1 -}}
{{- printf "http://%s-%s-canary-predictor.%s" (include "aads.fullname" $root) $crop $root.Release.Namespace -}}
{{- end -}}

{{- define "aads.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int (default 0 .gpus)) 0 -}}
{{- $_ := set $res "limits" (merge (default dict $res.limits) (dict "nvidia.com/gpu" (int .gpus))) -}}
{{- $_ := set $res "requests" (merge (default dict $res.requests) (dict "nvidia.com/gpu" (int .gpus))) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Names of the adapter InferenceServices (KServe labels their pods with them). */}}
{{- define "aads.adapterServices" -}}
{{- if eq .Values.adapters.mode "multi" -}}
{{- list (printf "%s-adapters" (include "aads.fullname" .)) | toJson -}}
{{- else -}}
{{- $names := list -}}
{{- range $crop, $_ := .Values.adapters.crops -}}
{{- $names = append $names (printf "%s-%s" (include "aads.fullname" $) $crop) -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}
{{- end -}}

{{/* Every InferenceService only the router calls: the crops' (or the multi one), the split
canaries and the scouting service. */}}
{{- define "aads.allAdapterServices" -}}
{{- $names := fromJsonArray (include "aads.adapterServices" .) -}}
{{- if .Values.scouting.enabled -}}
{{- $names = append $names (printf "%s-scouting" (include "aads.fullname" .)) -}}
{{- end -}}
{{- range $crop, $c := .Values.adapters.crops -}}
{{- if include "aads.canaryBySplit" (list $ $c) -}}
{{- $names = append $names (printf "%s-%s-canary" (include "aads.fullname" $) $crop) -}}
{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}

{{- define "aads.componentImage" -}}
{{- printf "%s:%s" .Values.componentImage.repository (default .Chart.AppVersion .Values.componentImage.tag) -}}
{{- end -}}

{{/* The chart installs MinIO only when no external object store is named. */}}
{{- define "aads.minioEnabled" -}}
{{- if and .Values.minio.enabled (not .Values.objectStore.endpoint) }}true{{ end -}}
{{- end -}}

{{- define "aads.s3Endpoint" -}}
{{- if .Values.objectStore.endpoint -}}
{{- .Values.objectStore.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s-minio.%s.svc:9000" (include "aads.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "objectStore.endpoint is empty and minio.enabled is false: name an S3 endpoint or enable the in-chart MinIO" -}}
{{- end -}}
{{- end -}}

{{- define "aads.s3UseHttps" -}}
{{- if and .Values.objectStore.useHttps .Values.objectStore.endpoint }}true{{ end -}}
{{- end -}}

{{- define "aads.s3SecretName" -}}
{{- default (printf "%s-s3" (include "aads.fullname" .)) .Values.objectStore.existingSecret -}}
{{- end -}}

{{/* The chart runs MLflow only when no external tracking server is named. */}}
{{- define "aads.mlflowEnabled" -}}
{{- if and .Values.mlflow.enabled (not .Values.mlflow.trackingUri) }}true{{ end -}}
{{- end -}}

{{- define "aads.trackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else if .Values.mlflow.enabled -}}
{{- printf "http://%s-mlflow.%s.svc:5000" (include "aads.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* A crop's canary is a second InferenceService the router splits to, except in Knative
single mode, where KServe's canaryTrafficPercent splits between revisions. */}}
{{- define "aads.canaryBySplit" -}}
{{- $root := index . 0 -}}{{- $c := index . 1 -}}
{{- if and $c.canary (or (eq $root.Values.adapters.mode "multi") (ne $root.Values.kserve.deploymentMode "Knative")) }}true{{ end -}}
{{- end -}}

{{/* Keys for the object store, from the Secret every pod reads (never from values). */}}
{{- define "aads.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ include "aads.s3SecretName" . }}, key: AWS_ACCESS_KEY_ID, optional: true}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ include "aads.s3SecretName" . }}, key: AWS_SECRET_ACCESS_KEY, optional: true}}
{{- end -}}
