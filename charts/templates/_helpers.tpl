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
