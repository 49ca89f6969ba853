"""The resolver's own logic on CPU: pending queue, completion, clock placement, events out."""

from __future__ import annotations

from sched_trace_cuda import GPU_SPAN_BASE, PendingStage, Resolver, is_gpu_event

from .fakes import MS, FakeEvent, cpu_stage


def pending(stage, start, end, device=0, enqueued_ns=0):
    return PendingStage(stage, start, end, device, enqueued_ns)


def test_a_pair_stays_pending_until_its_end_event_completes():
    resolver = Resolver()
    stage = cpu_stage()
    end = FakeEvent(stage.start_ns + 4 * MS, done=False)
    resolver.add([pending(stage, FakeEvent(stage.start_ns), end)])

    assert resolver.poll(now_ns=0) == []
    assert len(resolver.pending) == 1
    end.done = True
    (event,) = resolver.poll(now_ns=0)
    assert not resolver.pending and resolver.resolved == 1
    assert event.duration_ns == 4 * MS


def test_the_gpu_event_is_a_regular_stage_event_linked_to_its_cpu_stage():
    resolver = Resolver()
    stage = cpu_stage(attrs={"requests": ["r1", "r2"], "phase": "decode"}, span_id=42)
    resolver.add([pending(stage, FakeEvent(stage.start_ns), FakeEvent(stage.start_ns + MS), device=3)])
    (event,) = resolver.poll(0)

    assert event.kind == "stage" and event.name == "forward/gpu" and event.level == stage.level
    assert event.parent_id == 0 and event.span_id >= GPU_SPAN_BASE and is_gpu_event(event)
    assert not is_gpu_event(stage)
    assert (event.microbatch, event.batch_id, event.batch_size) == (3, 11, 64)
    assert event.rank.thread_label == "Scheduler/cuda:3"
    assert (event.rank.pp_rank, event.rank.host_id, event.rank.pid) == (1, "node0", 100)
    assert event.rank.tid == 200 + (4 << 22)  # a track of its own, never a real thread id
    assert event.attrs == {"phase": "decode", "gpu.device": 3, "gpu.cpu_span_id": 42,
                           "gpu.queue_delay_ns": 0}
    assert event.error is None


def test_a_stage_that_raised_is_still_timed_and_says_so():
    resolver = Resolver(suffix=".cuda")
    stage = cpu_stage(error=ValueError("bad batch"))
    resolver.add([pending(stage, FakeEvent(stage.start_ns), FakeEvent(stage.start_ns + MS))])
    (event,) = resolver.poll(0)
    assert event.name == "forward.cuda" and event.error is None
    assert event.attrs["gpu.cpu_error"] == "ValueError"


def test_gpu_work_is_never_placed_before_the_cpu_launched_it():
    # The stream was busy: the GPU ran the stage 30 ms after launch, for 2 ms. The
    # first pair has no history, so the estimate is the earliest possible time.
    resolver = Resolver()
    stage = cpu_stage(start_ns=1_000 * MS, end_ns=1_001 * MS)
    resolver.add([pending(stage, FakeEvent(1_030 * MS), FakeEvent(1_032 * MS))])
    (event,) = resolver.poll(0)
    assert event.start_ns >= stage.start_ns
    assert event.end_ns >= stage.end_ns
    assert event.duration_ns == 2 * MS


def test_the_end_bound_moves_a_short_kernel_after_its_launch():
    # GPU work shorter than the CPU stage must still end after the CPU recorded its end.
    resolver = Resolver()
    stage = cpu_stage(start_ns=1_000 * MS, end_ns=1_010 * MS)
    resolver.add([pending(stage, FakeEvent(1_009 * MS), FakeEvent(1_010 * MS))])
    (event,) = resolver.poll(0)
    assert (event.start_ns, event.end_ns) == (1_009 * MS, 1_010 * MS)


def test_a_backlog_is_placed_exactly_by_chaining_after_an_idle_launch():
    # Stage 1 is launched into an idle stream (GPU time == CPU time); stages 2 and 3
    # are launched 1 ms apart but queue behind 20 ms of GPU work each.
    resolver = Resolver()
    truth = []
    for index in range(3):
        cpu_start = 1_000 * MS + index * MS
        gpu_start = 1_000 * MS + index * 20 * MS
        stage = cpu_stage(start_ns=cpu_start, end_ns=cpu_start + MS // 2, span_id=index + 1)
        resolver.add([pending(stage, FakeEvent(gpu_start), FakeEvent(gpu_start + 20 * MS))])
        truth.append((gpu_start, gpu_start + 20 * MS))
    events = resolver.poll(0)
    assert [(e.start_ns, e.end_ns) for e in events] == truth
    assert [e.attrs["gpu.queue_delay_ns"] for e in events] == [0, 19 * MS, 38 * MS]


def test_timelines_are_kept_per_device():
    resolver = Resolver()
    for device in (0, 1):
        stage = cpu_stage(span_id=device + 1)
        resolver.add([pending(stage, FakeEvent(stage.start_ns), FakeEvent(stage.start_ns + MS), device)])
    events = resolver.poll(0)
    assert sorted(resolver.timelines) == [0, 1]
    assert [e.rank.thread_label for e in events] == ["Scheduler/cuda:0", "Scheduler/cuda:1"]


def test_completed_pairs_resolve_past_one_still_running_on_another_stream():
    resolver = Resolver()
    slow_end = FakeEvent(1_050 * MS, done=False)
    resolver.add([
        pending(cpu_stage("slow", span_id=1), FakeEvent(1_000 * MS), slow_end),
        pending(cpu_stage("fast", span_id=2), FakeEvent(1_000 * MS), FakeEvent(1_001 * MS)),
    ])
    assert [e.name for e in resolver.poll(0)] == ["fast/gpu"]
    slow_end.done = True
    assert [e.name for e in resolver.poll(0)] == ["slow/gpu"]


def test_pairs_that_never_complete_expire_and_are_counted():
    resolver = Resolver(expire_ns=10 * MS)
    resolver.add([pending(cpu_stage(), FakeEvent(), FakeEvent(done=False), enqueued_ns=0)])
    assert resolver.poll(now_ns=5 * MS) == [] and len(resolver.pending) == 1
    assert resolver.poll(now_ns=11 * MS) == [] and not resolver.pending
    assert resolver.expired == 1


def test_a_full_queue_drops_and_recycles_the_new_pair():
    recycled = []
    resolver = Resolver(max_pending=1, recycle=lambda event, device: recycled.append((event, device)))
    first = pending(cpu_stage(), FakeEvent(), FakeEvent(done=False))
    second = pending(cpu_stage(), FakeEvent(), FakeEvent(done=False), device=2)
    resolver.add([first, second])
    assert list(resolver.pending) == [first]
    assert resolver.dropped == 1
    assert recycled == [(second.start, 2), (second.end, 2)]


def test_events_are_recycled_once_the_timeline_no_longer_needs_them():
    recycled = []
    resolver = Resolver(recycle=lambda event, device: recycled.append(event))
    pairs = []
    for index in range(2):
        start = 1_000 * MS + index * 10 * MS
        pairs.append(pending(cpu_stage(start_ns=start, end_ns=start + MS, span_id=index + 1),
                             FakeEvent(start), FakeEvent(start + MS)))
    resolver.add(pairs[:1])
    resolver.poll(0)
    assert recycled == [pairs[0].start]  # its end event anchors the device timeline
    resolver.add(pairs[1:])
    resolver.poll(0)
    assert recycled == [pairs[0].start, pairs[1].start, pairs[0].end]
    assert resolver.timelines[0].ref is pairs[1].end


def test_a_failing_query_is_counted_never_raised():
    resolver = Resolver()
    end = FakeEvent()
    end.raise_on_query = True
    resolver.add([pending(cpu_stage(), FakeEvent(), end)])
    assert resolver.poll(0) == []
    assert resolver.failed == 1 and not resolver.pending
