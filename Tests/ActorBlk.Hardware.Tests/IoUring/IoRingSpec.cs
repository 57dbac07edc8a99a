using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.IoUring;
using Xunit;

namespace ActorBlk.Hardware.Tests.IoUring;

/// <summary>
/// The raw io_uring binding against the running kernel: setup, the SQ and CQ rings through many
/// wrap-arounds, timed waits, registration and the opcode probe.
/// </summary>
public sealed unsafe class IoRingSpec
{
    private static IoRing Create(uint entries, IoUringSetupFlags flags = IoUringSetupFlags.None)
    {
        var result = IoRing.TryCreate(entries, flags, out var ring);
        Assert.True(result == 0, $"io_uring_setup failed: {result} ({IoUringSupport.Current.Summary})");
        return ring!;
    }

    [Fact]
    public void The_kernel_supports_what_the_engine_needs()
    {
        var support = IoUringSupport.Current;

        Assert.True(support.Available, support.Summary);
        Assert.True((support.Features & IoUringFeatures.ExtArg) != 0);
    }

    [Fact]
    public void Submissions_count_the_enters_that_carried_entries_and_how_many()
    {
        using var ring = Create(16);
        Span<IoUringCqe> cqes = stackalloc IoUringCqe[16];
        for (var batch = 1; batch <= 4; batch++)
        {
            for (var i = 0; i < batch; i++)
            {
                var sqe = ring.TryGetSqe();
                Assert.True(sqe is not null);
                sqe->Opcode = IoUringOp.Nop;
            }

            Assert.Equal(batch, ring.Submit((uint)batch));
            Assert.Equal(batch, ring.Reap(cqes));
        }

        // A wait that hands nothing over is not a submission.
        Assert.Equal(-LibC.ETIME, ring.Submit(1, timeoutMs: 1));
        Assert.Equal(4, ring.Submissions);
        Assert.Equal(1 + 2 + 3 + 4, ring.Submitted);
    }

    [Fact]
    public void Completion_ring_size_is_twice_the_submission_ring()
    {
        using var ring = Create(16);
        Assert.Equal(16u, ring.SqEntries);
        Assert.Equal(32u, ring.CqEntries);
    }

    [Fact]
    public void Nops_come_back_with_their_user_data_through_many_wrap_arounds()
    {
        using var ring = Create(8);
        Span<IoUringCqe> cqes = stackalloc IoUringCqe[16];
        ulong next = 0;
        ulong expected = 0;
        for (var round = 0; round < 100; round++)
        {
            var batch = (round % 8) + 1;
            for (var i = 0; i < batch; i++)
            {
                var sqe = ring.TryGetSqe();
                Assert.True(sqe is not null);
                sqe->Opcode = IoUringOp.Nop;
                sqe->UserData = next++;
            }

            Assert.Equal(batch, ring.Submit((uint)batch));
            var n = ring.Reap(cqes);
            Assert.Equal(batch, n);
            for (var i = 0; i < n; i++)
            {
                Assert.Equal(expected++, cqes[i].UserData);
                Assert.Equal(0, cqes[i].Result);
            }
        }

        Assert.Equal(0u, ring.Unsubmitted);
        Assert.False(ring.HasCompletions);
    }

    [Fact]
    public void A_full_submission_ring_refuses_more_entries_until_submitted()
    {
        using var ring = Create(4);
        for (var i = 0; i < 4; i++)
        {
            Assert.True(ring.TryGetSqe() is not null);
        }

        Assert.True(ring.TryGetSqe() is null);
        Assert.Equal(4u, ring.Unsubmitted);
        Assert.Equal(4, ring.Submit());
        Assert.True(ring.TryGetSqe() is not null);
    }

    [Fact]
    public void A_timed_wait_without_completions_times_out()
    {
        using var ring = Create(4, IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun);
        Assert.Equal(-62, ring.Submit(minComplete: 1, timeoutMs: 5));
        Assert.Equal(-62, ring.WaitCompletions(1, 5));
    }

    [Fact]
    public void With_TASKRUN_FLAG_the_kernel_flags_deferred_completion_work_until_an_enter_runs_it()
    {
        // A read of an empty eventfd waits in the kernel; the write that wakes it queues the
        // completion as task work, which DEFER_TASKRUN leaves for the issuer's next enter.
        using var ring = Create(4, IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun | IoUringSetupFlags.CoopTaskRun | IoUringSetupFlags.TaskRunFlag);
        // Without DEFER_TASKRUN (5.19-6.0 keep the flag and drop it) the work would run as the write returns.
        Assert.True((ring.Flags & (IoUringSetupFlags.TaskRunFlag | IoUringSetupFlags.DeferTaskRun)) == (IoUringSetupFlags.TaskRunFlag | IoUringSetupFlags.DeferTaskRun), $"TASKRUN_FLAG or DEFER_TASKRUN refused: {ring.Flags}");
        var fd = LibC.EventFd(0, 0);
        Assert.True(fd >= 0);
        try
        {
            ulong value = 0;
            var sqe = ring.TryGetSqe();
            sqe->Opcode = IoUringOp.Read;
            sqe->Fd = fd;
            sqe->Address = (ulong)&value;
            sqe->Length = sizeof(ulong);
            sqe->UserData = 7;
            Assert.Equal(1, ring.Submit());
            Assert.False(ring.TaskWorkPending);
            Assert.False(ring.HasCompletions);

            ulong one = 1;
            Assert.Equal(sizeof(ulong), (int)LibC.Write(fd, &one, sizeof(ulong)));

            // The completion is pending and not yet in the ring: only an enter posts it.
            Assert.True(ring.TaskWorkPending);
            Assert.False(ring.HasCompletions);
            var enters = ring.Enters;
            Assert.Equal(0, ring.Submit());
            Assert.Equal(enters + 1, ring.Enters);
            Assert.False(ring.TaskWorkPending);
            Span<IoUringCqe> cqe = stackalloc IoUringCqe[1];
            Assert.Equal(1, ring.Reap(cqe));
            Assert.Equal(7ul, cqe[0].UserData);
            Assert.Equal(sizeof(ulong), cqe[0].Result);
            Assert.Equal(1ul, value);
        }
        finally
        {
            LibC.Close(fd);
        }
    }

    [Fact]
    public void A_completion_posted_during_its_submission_leaves_no_work_flagged()
    {
        // A NOP completes inside the enter that submits it: nothing is left for a second enter.
        using var ring = Create(4, IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun | IoUringSetupFlags.CoopTaskRun | IoUringSetupFlags.TaskRunFlag);
        var sqe = ring.TryGetSqe();
        sqe->Opcode = IoUringOp.Nop;
        Assert.Equal(1, ring.Submit());
        Assert.True(ring.HasCompletions);
        Assert.False(ring.TaskWorkPending);
    }

    [Fact]
    public void Files_and_the_ring_descriptor_register()
    {
        using var ring = Create(4);
        using var file = new FileStream(Path.GetTempFileName(), FileMode.Open, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
        var fd = (int)file.SafeFileHandle.DangerousGetHandle();

        Assert.Equal(0, ring.RegisterFiles([fd]));
        Assert.True(ring.TryRegisterRingFd());
        Assert.True(ring.RingFdRegistered);

        // A NOP still round-trips through the registered ring descriptor.
        var sqe = ring.TryGetSqe();
        sqe->Opcode = IoUringOp.Nop;
        sqe->UserData = 42;
        Assert.Equal(1, ring.Submit(1));
        Span<IoUringCqe> cqe = stackalloc IoUringCqe[1];
        Assert.Equal(1, ring.Reap(cqe));
        Assert.Equal(42ul, cqe[0].UserData);
    }

    [Fact]
    public void The_probe_lists_the_opcodes_the_engine_issues()
    {
        using var ring = Create(4);
        var ops = ring.ProbeOps();
        Assert.All(IoUringSupport.RequiredOps, op => Assert.Contains(op, ops));
    }

    [Fact]
    public void Unsupported_setup_flags_are_dropped_not_fatal()
    {
        // Bit 31 is no setup flag any kernel knows: setup fails with EINVAL and the ring is
        // created without the optional groups.
        using var ring = Create(4, (IoUringSetupFlags)(1u << 31) | IoUringSetupFlags.SubmitAll);
        Assert.Equal(IoUringSetupFlags.CqSize, ring.Flags);
    }
}
