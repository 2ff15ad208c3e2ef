{{- define "torpor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "torpor.labels" -}}
app.kubernetes.io/name: torpor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: torpor
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "torpor.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "torpor.runtimeImage" -}}
{{ .Values.runtimeImage.repository | default .Values.image.repository }}:{{ .Values.runtimeImage.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "torpor.tokenSecret" -}}{{ include "torpor.fullname" . }}-runtime-token{{- end -}}
{{- define "torpor.sealingSecret" -}}{{ .Values.sealing.existingSecret | default (printf "%s-sealing-keys" (include "torpor.fullname" .)) }}{{- end -}}
{{- define "torpor.hibernationClaim" -}}{{ .Values.hibernation.existingClaim | default (printf "%s-hibernation" (include "torpor.fullname" .)) }}{{- end -}}

{{/* Env every component needs to talk to runtime pods. */}}
{{- define "torpor.tokenEnv" -}}
- name: TORPOR_RUNTIME_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "torpor.tokenSecret" . }}, key: token}}
{{- end -}}
