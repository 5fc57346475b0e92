-- Backstage ships the `AiResource` kind (skills and rules for AI coding tools) as the opt-in module
-- `@backstage/plugin-catalog-backend-module-ai-model`; its example catalog uses it. It is registered here
-- from the start, as an ordinary custom kind: an operator may replace or delete it like any other.
-- The schema follows Backstage's `AiResource.v1alpha1{,.skill,.rule,.plugin,.marketplace}.schema.json`
-- (the envelope and metadata are checked by the built-in rules, so it covers `spec`).
INSERT INTO kinds (kind_key, api_version, kind, schema, relations, etag) VALUES (
    'airesource',
    'backstage.io/v1alpha1',
    'AiResource',
    $schema${
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "description": "An AI resource: contextual information consumed by AI coding tools, such as skills and rules.",
      "type": "object",
      "required": ["spec"],
      "properties": {
        "spec": {
          "type": "object",
          "required": ["type", "lifecycle", "owner"],
          "properties": {
            "type": {"type": "string", "minLength": 1},
            "lifecycle": {"type": "string", "minLength": 1},
            "owner": {"type": "string", "minLength": 1},
            "system": {"type": "string", "minLength": 1},
            "disciplines": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "categories": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "agents": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "dependsOn": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "allowedTools": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "license": {"type": "string", "minLength": 1},
            "compatibility": {"type": "string", "minLength": 1},
            "category": {"type": "string", "minLength": 1},
            "rationale": {"type": "string", "minLength": 1},
            "skills": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "plugins": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "version": {"type": "string", "minLength": 1}
          },
          "allOf": [
            {"if": {"properties": {"type": {"const": "rule"}}},
             "then": {"required": ["category", "rationale"]}},
            {"if": {"properties": {"type": {"const": "plugin"}}}, "then": {"required": ["skills"]}},
            {"if": {"properties": {"type": {"const": "marketplace"}}}, "then": {"required": ["plugins"]}}
          ]
        }
      }
    }$schema$::jsonb,
    $relations$[
      {"field": "owner", "defaultKind": "Group", "forward": "ownedBy", "reverse": "ownerOf"},
      {"field": "system", "defaultKind": "System", "forward": "partOf", "reverse": "hasPart"},
      {"field": "dependsOn", "defaultKind": "AiResource", "forward": "dependsOn", "reverse": "dependencyOf"},
      {"field": "skills", "defaultKind": "AiResource", "forward": "hasSkill", "reverse": "skillOf"},
      {"field": "plugins", "defaultKind": "AiResource", "forward": "hasPlugin", "reverse": "pluginOf"}
    ]$relations$::jsonb,
    'builtin-airesource-v1alpha1'
);
