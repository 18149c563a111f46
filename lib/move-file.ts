// Keeping a finished upload: its file (the temp-file writer's `meta.path`) moved where the
// app wants it, from a consume callback. A rename cannot cross file systems (a tmpfs /tmp,
// a container volume): there the file is copied, then the original removed.
import { constants } from 'node:fs'
import { copyFile, link, mkdir, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'

export interface MoveFileOptions {
  /** Replace a file already at the destination. Default false: the move fails with EEXIST. */
  overwrite?: boolean
}

/** Errors of a hard link that mean "not here": another file system, or one without links. */
const NO_LINK = new Set(['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'])

/**
 * Moves `from` to `destination`, creating the destination's directory. Same file system: a
 * link then unlink (or a rename, with `overwrite`), so the bytes are not copied; across file
 * systems: a copy, then the original removed. Without `overwrite` an existing file at the
 * destination is never replaced (EEXIST). Resolves with `destination`.
 */
export async function moveFile (from: string, destination: string, options: MoveFileOptions = {}): Promise<string> {
  await mkdir(dirname(destination), { recursive: true })
  try {
    if (options.overwrite === true) await rename(from, destination)
    else await link(from, destination)
  } catch (error) {
    if (!NO_LINK.has((error as NodeJS.ErrnoException).code!)) throw error
    await copyFile(from, destination, options.overwrite === true ? 0 : constants.COPYFILE_EXCL)
  }
  // After a rename the source is already gone; `force` makes that no error.
  await rm(from, { force: true })
  return destination
}
