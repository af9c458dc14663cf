// Entry point. Kept tiny: top-level code is @MainActor, so all real work
// (accept loop, per-connection pthreads) lives in other files.
let config = Config.load(arguments: CommandLine.arguments)
HTTPServer(config: config, router: Router(config: config, state: MockState())).run()
