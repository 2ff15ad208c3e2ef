import assert from "node:assert/strict";
import { symlink } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { resolveSessionDir, validateSubPath } from "../../runtime/storage/hibernation-path.js";
import { TorporError } from "../../contract/errors.js";
import { tempDir } from "../../testbed/temp-dir.js";

describe("hibernation paths", () => {
  it("accepts tenant sub-paths and refuses escapes", () => {
    assert.deepEqual(validateSubPath("tenant-a/fast_ssd"), ["tenant-a", "fast_ssd"]);
    for (const bad of ["..", "../x", "a/../..", "/abs", "a//b", ".hidden", "a/.git", "a b"]) {
      assert.throws(() => validateSubPath(bad), (e: TorporError) => e.code === "invalid_path", bad);
    }
  });

  it("never resolves outside the namespace folder (property)", async () => {
    const root = await tempDir("torpor-prop-");
    await fc.assert(fc.asyncProperty(fc.array(fc.constantFrom("a", "b", "..", ".", "", "/", "c.d", "%2e%2e"), { maxLength: 6 }), async (parts) => {
      const sub = parts.join("/");
      try {
        const dir = await resolveSessionDir(root, "ns", sub);
        assert.ok(dir === path.join(root, "ns") || dir.startsWith(path.join(root, "ns") + path.sep), `${sub} -> ${dir}`);
      } catch (e) {
        assert.ok(e instanceof TorporError && (e.code === "invalid_path" || e.code === "bad_request"), String(e));
      }
    }), { numRuns: 200 });
  });

  it("refuses a symlink that leads out of the volume", async () => {
    const root = await tempDir("torpor-sym-");
    const outside = await tempDir("torpor-out-");
    await resolveSessionDir(root, "ns", "");
    await symlink(outside, path.join(root, "ns", "link"));
    await assert.rejects(resolveSessionDir(root, "ns", "link/deeper"), (e: TorporError) => e.code === "invalid_path");
  });

  it("refuses a namespace folder that is a symlink (another tenant's), and names no absolute path", async () => {
    const root = await tempDir("torpor-nsym-");
    await resolveSessionDir(root, "victim", "");
    await symlink(path.join(root, "victim"), path.join(root, "thief"));
    await assert.rejects(resolveSessionDir(root, "thief", "", root), (e: TorporError) => e.code === "invalid_path" && !e.message.includes(root));
    await assert.rejects(resolveSessionDir(root, "thief", "a"), (e: TorporError) => e.code === "invalid_path");
  });
});
