using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using DataPlane = ActorBlk.Hardware.Queues;
using DataPlaneQueue = ActorBlk.Hardware.Queues.RequestQueue;

namespace ActorBlk.Actors;

/// <summary>
/// Mailbox dispatch (<see cref="DispatchMode.Mailbox"/>): every step of a request is a message.
/// A bio goes to its software-context actor, which builds and stages the request; the request
/// goes to its hardware-queue actor, which hands batches to the driver actor; a redirected
/// completion goes back to the software-context actor of the submitting CPU.
/// </summary>
internal sealed class MailboxRuntime : IQueueRuntime
{
    private readonly IActorRef[] _contexts;
    private readonly IActorRef[] _hardwareQueues;
    private readonly TimeSpan _askTimeout;

    public MailboxRuntime(IActorRef[] contexts, IActorRef[] hardwareQueues, TimeSpan askTimeout)
    {
        _contexts = contexts;
        _hardwareQueues = hardwareQueues;
        _askTimeout = askTimeout;
    }

    public DispatchMode Mode => DispatchMode.Mailbox;

    public void Attach(DataPlaneQueue queue)
    {
    }

    public void Submit(DataPlane.SoftwareContext ctx, Bio bio) => _contexts[ctx.Cpu].Tell(new SoftwareContext.SubmitBio(bio));

    public void ResumeBio(Bio bio) => _contexts[bio.Cpu].Tell(new SoftwareContext.SubmitBio(bio));

    public void Stage(HardwareContext hctx, Request request) => _hardwareQueues[hctx.Index].Tell(new HardwareQueue.Dispatch(request));

    public void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests) =>
        _hardwareQueues[hctx.Index].Tell(new HardwareQueue.DispatchBatch(requests.ToArray()));

    public void Kick(HardwareContext hctx) => _hardwareQueues[hctx.Index].Tell(HardwareQueue.Run.Instance);

    public void DeliverCompletion(DataPlane.SoftwareContext target, Request request) =>
        _contexts[target.Cpu].Tell(new SoftwareContext.CompleteRequest(request));

    public Task WaitDispatchIdleAsync(HardwareContext hctx) =>
        _hardwareQueues[hctx.Index].Ask<HardwareQueue.DispatchIdle>(HardwareQueue.WaitIdle.Instance, _askTimeout);

    public Task DetachAsync() => Task.CompletedTask;
}
