/** The machine a benchmark ran on, for the report. */
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { packageVersion, TRANSFORMERS_ORT_WEB } from './versions.ts'

export interface MachineInfo {
  cpu: string
  cores: number
  /** SIMD extensions the CPU reports (of the ones that matter for these kernels). */
  simd: string[]
  memoryBytes: number
  os: string
  node: string
  versions: Record<string, string>
}

export function describeMachine(): MachineInfo {
  let cpuinfo = ''
  try {
    cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  } catch {
    // not Linux: os.cpus() below still names the CPU
  }
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown'
  const flags = new Set((/^flags\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/))
  return {
    cpu: model.trim(),
    cores: os.cpus().length,
    simd: ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx_vnni'].filter((f) =>
      flags.has(f),
    ),
    memoryBytes: os.totalmem(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    versions: {
      'onnxruntime-web': packageVersion('onnxruntime-web'),
      'onnxruntime-node': packageVersion('onnxruntime-node'),
      '@huggingface/transformers': packageVersion('@huggingface/transformers'),
      'onnxruntime-web (transformers.js)': packageVersion(TRANSFORMERS_ORT_WEB),
    },
  }
}
