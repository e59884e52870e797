package health

import _ "embed"

// HealthSchemaJSON is the JSON Schema of /health.json; MetricsSchemaJSON that of /metrics.json.
// Both are served beside the documents (/health.schema.json, /metrics.schema.json).
var (
	//go:embed health.schema.json
	HealthSchemaJSON []byte
	//go:embed metrics.schema.json
	MetricsSchemaJSON []byte
	// LogSchemaJSON is the schema of /log.json, served at /log.schema.json.
	//go:embed log.schema.json
	LogSchemaJSON []byte
)
