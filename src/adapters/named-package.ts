/**
 * A package named by its location (MODEL=/data/models/x-backup, MODEL=https://cdn/x) is an
 * explicit choice: it is served under its manifest's id, whatever the folder is called now.
 */
import type { LoadPackageOptions } from '../engine/index.ts'

export const BY_PATH: LoadPackageOptions = { anyId: true }

/** Logs when the folder's name and the package's id differ, then passes the package on. */
export async function named<T extends { id: string }>(
  load: Promise<T>,
  folder: string,
): Promise<T> {
  const pkg = await load
  if (pkg.id !== folder) {
    console.log(`serving ${folder} as package ${pkg.id} (the id in its manifest.json)`)
  }
  return pkg
}
