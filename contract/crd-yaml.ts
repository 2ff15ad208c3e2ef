import YAML from "yaml";
import { inferenceSessionCrd } from "./crd.js";

export const CRD_FILE = "crds/inferencesessions.torpor.dev.yaml";

export function renderCrdYaml(): string {
  return "# Generated from contract/crd.ts by `npm run generate`; do not edit by hand.\n" + YAML.stringify(inferenceSessionCrd(), { lineWidth: 0 });
}
