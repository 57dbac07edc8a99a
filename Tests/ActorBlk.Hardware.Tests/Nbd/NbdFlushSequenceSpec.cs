using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The flush sequence of blk-flush.c for an NBD client device with a volatile cache (blk-mq-semantics
/// §3: the queue hands <c>PreFlush</c> and <c>Fua</c> to the driver): a preflush is an
/// <c>NBD_CMD_FLUSH</c> answered before the write goes out, and a FUA the server cannot take (it
/// advertises flush but not FUA) is a flush after the write. A review found both dropped, so a
/// journal's commit block could reach the far disk before the blocks it commits.
/// </summary>
public sealed class NbdFlushSequenceSpec
{
    private const NbdTransmissionFlags FlushOnly = NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes;

    // A server that answers each request only when the spec lets it, so the spec sees what the
    // client sent before an answer.
    private sealed class SteppedServer : IAsyncDisposable
    {
        private readonly System.Collections.Concurrent.ConcurrentQueue<TaskCompletionSource<NbdError>> _answers = new();

        private readonly System.Threading.Channels.Channel<(FakeNbdRequest Request, TaskCompletionSource<NbdError> Answer)> _arrived =
            System.Threading.Channels.Channel.CreateUnbounded<(FakeNbdRequest, TaskCompletionSource<NbdError>)>();

        public SteppedServer(NbdTransmissionFlags flags) =>
            Server = new FakeNbdServer(_ => FakeNbdExport.Default with { Flags = flags }, async session =>
            {
                while (await session.ReadRequestAsync() is { } request && request.Command != NbdCommand.Disconnect)
                {
                    var answer = new TaskCompletionSource<NbdError>(TaskCreationOptions.RunContinuationsAsynchronously);
                    _answers.Enqueue(answer);
                    await _arrived.Writer.WriteAsync((request, answer));
                    await session.ReplyAsync(request, await answer.Task);
                }
            });

        public FakeNbdServer Server { get; }

        public async Task<(FakeNbdRequest Request, TaskCompletionSource<NbdError> Answer)> NextAsync() =>
            await _arrived.Reader.ReadAsync().AsTask().WaitAsync(Condition.Timeout);

        public bool NothingWaiting => !_arrived.Reader.TryPeek(out _);

        public ValueTask DisposeAsync()
        {
            AnswerAll();
            return Server.DisposeAsync();
        }

        // A spec that failed half way leaves requests unanswered: they get EIO, so neither the
        // device's teardown nor the server's scripts wait for ever. Disposed before the devices.
        public IDisposable AnswerAllOnExit() => new Answering(this);

        private void AnswerAll()
        {
            while (_answers.TryDequeue(out var answer))
            {
                answer.TrySetResult(NbdError.Io);
            }
        }

        private sealed class Answering(SteppedServer server) : IDisposable
        {
            public void Dispose() => server.AnswerAll();
        }
    }

    [Fact]
    public async Task A_preflush_goes_out_as_a_flush_and_the_write_only_once_the_flush_is_answered()
    {
        await using var far = new SteppedServer(FlushOnly | NbdTransmissionFlags.SendFua);
        await using var devices = new RingDevices(2);
        using var answered = far.AnswerAllOnExit();
        var device = devices.Create(new DeviceOptions { Name = "pf", Driver = "nbd", Uri = far.Server.Uri(), Connections = 1 }, CpuTopology.Simulated(2));
        using var data = AlignedBuffer.For(device, 4096);

        var write = device.WriteAsync(8192, data.Memory, RequestFlags.PreFlush | RequestFlags.Fua).AsTask();
        var (flush, answerFlush) = await far.NextAsync();
        Assert.Equal(NbdCommand.Flush, flush.Command);

        // The write waits for the flush's answer: nothing else has arrived, and it is not done.
        Assert.True(far.NothingWaiting);
        Assert.False(write.IsCompleted);
        answerFlush.SetResult(NbdError.None);

        var (written, answerWrite) = await far.NextAsync();
        Assert.Equal(NbdCommand.Write, written.Command);
        Assert.Equal(8192UL, written.Offset);
        Assert.Equal(NbdCommandFlags.Fua, written.Flags & NbdCommandFlags.Fua); // the server takes FUA
        // The same request (generation and tag), another stage: a cookie of its own, so a second
        // reply to the flush cannot pass for the write's.
        Assert.Equal((flush.Cookie >> 32, flush.Cookie & 0xffff), (written.Cookie >> 32, written.Cookie & 0xffff));
        Assert.NotEqual(flush.Cookie, written.Cookie);
        answerWrite.SetResult(NbdError.None);
        await write.WaitAsync(Condition.Timeout);
        Assert.True(far.NothingWaiting);
        Assert.Empty(far.Server.Faults);
    }

    [Fact]
    public async Task A_fua_the_server_cannot_take_is_a_flush_after_the_write_and_a_failed_flush_fails_the_write()
    {
        await using var far = new SteppedServer(FlushOnly);
        await using var devices = new RingDevices(2);
        using var answered = far.AnswerAllOnExit();
        var device = devices.Create(new DeviceOptions { Name = "nofua", Driver = "nbd", Uri = far.Server.Uri(), Connections = 1 }, CpuTopology.Simulated(2));
        Assert.False(device.Queue.Limits.Fua);
        using var data = AlignedBuffer.For(device, 4096);

        var write = device.WriteAsync(0, data.Memory, RequestFlags.Fua).AsTask();
        var (written, answerWrite) = await far.NextAsync();
        Assert.Equal(NbdCommand.Write, written.Command);
        Assert.Equal(NbdCommandFlags.None, written.Flags & NbdCommandFlags.Fua);
        answerWrite.SetResult(NbdError.None);

        var (flush, answerFlush) = await far.NextAsync();
        Assert.Equal(NbdCommand.Flush, flush.Command);
        Assert.False(write.IsCompleted); // durable only once the flush is answered
        answerFlush.SetResult(NbdError.None);
        await write.WaitAsync(Condition.Timeout);

        // The flush after the write fails: so does the write, with the flush's error.
        var failing = device.WriteAsync(4096, data.Memory, RequestFlags.Fua).AsTask();
        (written, answerWrite) = await far.NextAsync();
        answerWrite.SetResult(NbdError.None);
        (flush, answerFlush) = await far.NextAsync();
        Assert.Equal(NbdCommand.Flush, flush.Command);
        answerFlush.SetResult(NbdError.Io);
        var error = await Assert.ThrowsAsync<BlockIoException>(() => failing.WaitAsync(Condition.Timeout));
        Assert.Equal(BlockStatus.IoError, error.Status);

        // A plain write is one command.
        var plain = device.WriteAsync(8192, data.Memory).AsTask();
        (written, answerWrite) = await far.NextAsync();
        Assert.Equal(NbdCommand.Write, written.Command);
        answerWrite.SetResult(NbdError.None);
        await plain.WaitAsync(Condition.Timeout);
        Assert.True(far.NothingWaiting);
        Assert.Empty(far.Server.Faults);
    }
}
