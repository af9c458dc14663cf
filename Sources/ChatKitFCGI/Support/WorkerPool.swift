/// The threads that run every request's work between its waits: parsing, the token, the store,
/// tools, writing records. A request waiting for the model (or for a retry's backoff) holds no
/// thread, so the threads follow the CPUs and the blocking calls (the store's), not the streams.
///
/// A Swift task executor: request tasks prefer it (`Task(executorPreference:)`), so they start
/// here and every `await` resumes here. The threads block in store calls as the worker threads
/// of a thread-per-request server do; there are enough of them that a few waiting for the
/// database leave the others running.
final class WorkerPool: TaskExecutor {
    private let queue = Locked(JobQueue())
    private let ready = Semaphore()

    /// First in, first out: a resumed stream goes behind the work that was waiting before it.
    private struct JobQueue {
        var jobs: [UnownedJob] = []
        var head = 0

        mutating func push(_ job: UnownedJob) { jobs.append(job) }

        mutating func pop() -> UnownedJob? {
            guard head < jobs.count else { return nil }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            }
            return job
        }
    }

    /// Starts `threads` threads, each with a stack of `stackBytes`.
    init(threads: Int, stackBytes: Int) {
        for index in 0..<threads {
            let started = DetachedThread.start(stackBytes: stackBytes) { [self] in run() }
            precondition(started, "the system refused to start worker thread \(index + 1) of \(threads)")
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.withLock { $0.push(job) }
        ready.signal()
    }

    private func run() -> Never {
        while true {
            ready.wait()
            guard let job = queue.withLock({ $0.pop() }) else { continue }
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
