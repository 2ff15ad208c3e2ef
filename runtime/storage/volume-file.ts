// Opening files on the shared volume, which anyone who can write it may have replaced. Opening a
// FIFO blocks a thread-pool thread until a writer comes (the runtime's pool has two: two such
// opens stop every decode on the pod), and a symlink to /dev/zero reads forever. So these opens
// never block (O_NONBLOCK), never follow a symlink in the last component (O_NOFOLLOW: the folders
// above are checked by hibernation-path.ts), and take regular files only.
import { constants, existsSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";

/** Its `code`, which survives the trip from a sealing thread (errors cross threads as data). */
export const UNEXPECTED_FILE = "EUNEXPECTED";

/** The file is not one torpor wrote: a symlink, a FIFO, a device, a folder, or too large. */
export class UnexpectedFileError extends Error {
  readonly code = UNEXPECTED_FILE;
}

const FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW;

/**
 * A regular file opened for reading, with its size (from the same fstat that checked it, so callers
 * need no second round trip); ENOENT as usual, UnexpectedFileError for anything else there.
 */
export async function openRegular(file: string): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(file, FLAGS);
  } catch (err) {
    // O_NOFOLLOW on a symlink fails with ELOOP; a FIFO or socket may refuse a nonblocking open.
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ELOOP" || code === "ENXIO" || code === "EOPNOTSUPP") throw new UnexpectedFileError("not a regular file (a symlink, FIFO or socket)");
    throw err;
  }
  const st = await fh.stat().catch(async (err: unknown) => { await fh.close(); throw err; });
  if (!st.isFile()) {
    await fh.close();
    throw new UnexpectedFileError("not a regular file");
  }
  return { fh, size: st.size };
}

/** A small regular file's text (a manifest), refused past `maxBytes`. */
export async function readRegularFile(file: string, maxBytes: number): Promise<string> {
  const { fh, size } = await openRegular(file);
  try {
    if (size > maxBytes) throw new UnexpectedFileError(`${size} bytes, more than the ${maxBytes} a manifest may hold`);
    return await fh.readFile("utf8");
  } finally {
    await fh.close();
  }
}

const PROC_FD = existsSync("/proc/self/fd");

/**
 * A path that names this open file itself, not whatever the volume holds under its name by the
 * time someone else opens it: on Linux /proc/self/fd/N reopens the same inode, so a library that
 * takes only a path (llama.cpp's state load) reads the file that was checked. The name itself
 * where there is no /proc.
 */
export function openedPath(fh: FileHandle, name: string): string {
  return PROC_FD ? `/proc/self/fd/${fh.fd}` : name;
}
