using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// A dispatch runtime that stages into the real rings but never dispatches on its own: a test
/// runs rounds with <see cref="RunRound"/> and sees every kick and redirected completion.
/// </summary>
public sealed class ManualRuntime : IQueueRuntime
{
    private readonly Request[] _scratch = new Request[64];
    private RequestQueue? _queue;

    /// <summary>The dispatch mode drivers see (<see cref="HardwareContext.HasDispatchThread"/>); ring by default.</summary>
    public DispatchMode Mode { get; init; } = DispatchMode.Ring;

    public List<int> Kicks { get; } = [];

    public List<(int Cpu, Request Request)> Redirected { get; } = [];

    public List<Bio> Resumed { get; } = [];

    public RequestQueue Queue => _queue!;

    public void Attach(RequestQueue queue) => _queue = queue;

    public void Submit(SoftwareContext ctx, Bio bio) => ctx.Queue.SubmitBio(bio);

    public void ResumeBio(Bio bio)
    {
        Resumed.Add(bio);
        bio.Queue!.SubmitBio(bio);
    }

    public void Stage(HardwareContext hctx, Request request)
    {
        if (!hctx.Ring.TryPublish(request))
        {
            throw new InvalidOperationException("ring full");
        }
    }

    public void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests)
    {
        if (!hctx.Ring.TryPublishBatch(requests))
        {
            throw new InvalidOperationException("ring full");
        }
    }

    public void Kick(HardwareContext hctx) => Kicks.Add(hctx.Index);

    public void DeliverCompletion(SoftwareContext target, Request request)
    {
        Redirected.Add((target.Cpu, request));
        target.Queue.EndRequest(request);
    }

    public Task WaitDispatchIdleAsync(HardwareContext hctx) => Task.CompletedTask;

    public Task DetachAsync() => Task.CompletedTask;

    /// <summary>Runs one dispatch round of hardware queue <paramref name="hctx"/>.</summary>
    public DispatchDecision RunRound(int hctx = 0) => Queue.HardwareContexts[hctx].RunOnce(Queue.Driver, _scratch);
}
