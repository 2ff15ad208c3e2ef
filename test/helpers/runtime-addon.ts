// Whether `npm install` builds the runtime addon on this machine (scripts/build-runtime-addon.sh):
// where it does, tests require it to be there, so a broken build fails them instead of going unnoticed.
import { spawnSync } from "node:child_process";

export const addonBuildable = process.platform === "linux" && process.arch === "x64"
  && spawnSync("c++", ["--version"]).status === 0 && spawnSync("git", ["--version"]).status === 0 && process.env.TORPOR_SKIP_ADDON_BUILD !== "1";
