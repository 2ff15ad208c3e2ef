// Writes crds/ and the chart's copy from contract/crd.ts (the single source).
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { renderCrdYaml } from "../contract/crd-yaml.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const yaml = renderCrdYaml();
for (const dir of ["crds", "charts/torpor/crds"]) {
  await mkdir(path.join(root, dir), { recursive: true });
  await writeFile(path.join(root, dir, "inferencesessions.torpor.dev.yaml"), yaml);
}
console.log("wrote crds/ and charts/torpor/crds/");
