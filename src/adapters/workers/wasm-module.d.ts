// wrangler bundles an imported .wasm file as a precompiled WebAssembly.Module.
declare module '*.wasm' {
  const module: WebAssembly.Module
  export default module
}
