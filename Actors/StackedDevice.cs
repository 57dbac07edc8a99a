using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of a stacked (bio-based) device's actor: it registers the queue, swaps tables while
/// the queue is frozen, and unregisters it. Stacking queues have no software contexts, hardware
/// queues or tags, and do not take part in CPU hotplug (blk-mq-semantics §8 item 1).
/// </summary>
public static class StackedDevice
{
    /// <summary>Replace the target (a new table of the same type); the reply is <see cref="BlockLayer.Created"/>. Local only.</summary>
    public sealed record SwapTarget(StackTarget Target) : INoSerializationVerificationNeeded;

    // The drain timeout is read when the device is unregistered: at a node's shutdown it is the
    // shortened one (BlockLayer.UnregisterDrainTimeout), as for request queues.
    internal static Props Props(BlockDevice device, Func<TimeSpan> drainTimeout) => Akka.Actor.Props.Create(() => new StackedDeviceActor(device, drainTimeout));
}

/// <summary>The stacked device's actor.</summary>
internal sealed class StackedDeviceActor : ReceiveActor
{
    private readonly BlockDevice _device;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private IActorRef? _unregisterReplyTo;
    private MirrorSyncStarted? _loggedSync;
    private MirrorReAddFailure? _loggedReAddFailure;

    // Read once, as the software contexts read it: not per message I/O (a review).
    private readonly int _maxRemoteData = Serialization.RemoteSurface.MaxRemoteData(Context.System.Settings.Config);
    private readonly RemoteIoBudget _remoteBudget = RemoteIoBudget.For(Context.System);

    public StackedDeviceActor(BlockDevice device, Func<TimeSpan> drainTimeout)
    {
        _device = device;
        Receive<StackedDevice.SwapTarget>(swap => SwapAsync(swap.Target).PipeTo(Sender));
        Receive<RequestQueueProtocol.GetInfo>(_ => Sender.Tell(Info()));
        Receive<RequestQueueProtocol.Io>(io => MessageIo.Submit(_device, new SoftwareContextProtocol.Submit(io.Id, io.Op, io.Offset, io.Length, io.Data, io.Flags),
            io.Cpu, Sender, _log, _maxRemoteData, _remoteBudget));
        Receive<RequestQueueProtocol.Unregister>(_ =>
        {
            _unregisterReplyTo = Sender;
            _log.Info("Unregistering {Device}", _device.Name);
            ShutdownAsync(drainTimeout()).PipeTo(Self, success: failed => new ShutdownDone(failed));
        });
        Receive<ShutdownDone>(done =>
        {
            _device.Queue.BioDriver?.Dispose();
            _log.Info("Unregistered {Device}: {State}", _device.Name, done.Failed == 0 ? "every bio completed" : $"{done.Failed} failed");
            var reply = new RequestQueueProtocol.Unregistered(_device.Name, done.Failed);
            _unregisterReplyTo?.Tell(reply);
            if (!Equals(_unregisterReplyTo, Context.Parent))
            {
                Context.Parent.Tell(reply);
            }

            Context.Stop(Self);
        });
    }

    protected override void PreStart()
    {
        _device.Queue.Register();
        _log.Info("Registered {Device}: {Description}", _device.Name, _device.Queue.BioDriver!.Description);
        if (_device.Queue.BioDriver is MirrorTarget mirror)
        {
            Subscribe(mirror);

            // A refusal while the mirror was assembled came before this subscription. One
            // raised while subscribing is the same record: logged once (ReAddFailed).
            if (mirror.LastAutomaticReAddFailure is { } last)
            {
                LogReAddFailure(last);
            }

            TellCurrentSync(mirror);
        }

        Context.Parent.Tell(new RequestQueueProtocol.Ready(_device.Name));
    }

    protected override void PostStop()
    {
        if (_device.Queue.BioDriver is MirrorTarget mirror)
        {
            Unsubscribe(mirror);
        }

        base.PostStop();
    }

    private void Subscribe(MirrorTarget mirror)
    {
        mirror.AutomaticReAddFailed += ReAddFailed;
        mirror.LegFailed += LegFailed;
        mirror.LegTakenBack += LegTakenBack;
        mirror.SyncStarted += SyncStarted;
        mirror.SyncEnded += SyncEnded;
        mirror.BackgroundFaulted += BackgroundFaulted;
    }

    private void Unsubscribe(MirrorTarget mirror)
    {
        mirror.AutomaticReAddFailed -= ReAddFailed;
        mirror.LegFailed -= LegFailed;
        mirror.LegTakenBack -= LegTakenBack;
        mirror.SyncStarted -= SyncStarted;
        mirror.SyncEnded -= SyncEnded;
        mirror.BackgroundFaulted -= BackgroundFaulted;
    }

    // A recovery or resync may have started while the mirror was assembled, before this
    // subscription (at start, or for a table swapped in): its end is logged, so its start is too.
    // A start raised while subscribing is the same record as CurrentSync: logged once (SyncStarted).
    private void TellCurrentSync(MirrorTarget mirror)
    {
        if (mirror.CurrentSync is { } pass)
        {
            SyncStarted(pass);
        }
    }

    // Raised on the thread pool; the logging adapter publishes to the event stream, which is safe there.
    // The mirror's LastAutomaticReAddFailure is the failure it raised, so the one read at
    // subscription and the one raised meanwhile are told apart from a later refusal.
    private void ReAddFailed(string leg, string reason)
    {
        if ((_device.Queue.BioDriver as MirrorTarget)?.LastAutomaticReAddFailure is { } last && last.Leg == leg && last.Reason == reason)
        {
            LogReAddFailure(last);
        }
        else
        {
            WarnReAddFailed(leg, reason);
        }
    }

    private void LogReAddFailure(MirrorReAddFailure failure)
    {
        if (!ReferenceEquals(Interlocked.Exchange(ref _loggedReAddFailure, failure), failure))
        {
            WarnReAddFailed(failure.Leg, failure.Reason);
        }
    }

    private void WarnReAddFailed(string leg, string reason) =>
        _log.Warning("{0}: leg {1} reconnected but was not taken back: {2}; it stays faulty until it reconnects again or is re-added (md/dev-{1}/state)", _device.Name, leg, reason);

    // Raised where the leg failed (an I/O completion, the resync, an attribute write), as ReAddFailed.
    private void LegFailed(string leg, int inSync, int legs)
    {
        if (inSync > 0)
        {
            _log.Warning("{0}: leg {1} is faulty; the mirror continues on {2} of {3} legs (degraded; md/degraded, md/dev-{1}/state)",
                _device.Name, leg, inSync, legs);
        }
        else
        {
            _log.Error("{0}: leg {1} failed and was the last leg in sync: every I/O of the mirror now fails with Offline", _device.Name, leg);
        }
    }

    // Raised by a re-add (an attribute write), a reconnection or a replacement, as ReAddFailed.
    private void LegTakenBack(MirrorLegTakenBack back) =>
        _log.Info("{0}: leg {1} {2}; it is rebuilding, {3} bitmap regions to recover (md/dev-{1}/state, md/sync_completed)", _device.Name, back.Leg, back.How switch
        {
            MirrorLegReturn.Reconnect => "reconnected and was re-added",
            MirrorLegReturn.Replacement => "was added in place of the faulty leg",
            _ => "was re-added",
        }, back.OwedRegions);

    // Raised on the sync's thread. md's names for the actions (md_do_sync). A pass is logged
    // once: the record raised is the one CurrentSync shows, read again at a subscription.
    private void SyncStarted(MirrorSyncStarted pass)
    {
        if (ReferenceEquals(Interlocked.Exchange(ref _loggedSync, pass), pass))
        {
            return;
        }

        _log.Info("{0}: {1} of RAID array started, {2} regions to do on {3} (md/sync_action, md/sync_completed)", _device.Name, MdName(pass.Action), pass.Regions,
            pass.Legs.Count == 0 ? "no leg" : string.Join(", ", pass.Legs));
    }

    // md says "done" or "interrupted"; a pass stopped by hand or by the mirror stopping, or left
    // with no leg to read from, is a warning: the legs it copied to are still owed their regions.
    private void SyncEnded(MirrorSyncEnded pass)
    {
        var name = MdName(pass.Action);
        var mismatches = pass.Action is "check" or "repair" ? $", {pass.MismatchSectors} mismatched sectors (md/mismatch_cnt)" : " (md/sync_action)";
        switch (pass.Outcome)
        {
            case MirrorSyncOutcome.Done:
                _log.Info("{0}: {1} done, {2} regions{3}", _device.Name, name, pass.RegionsDone, mismatches);
                break;
            case MirrorSyncOutcome.NoSource:
                _log.Warning("{0}: {1} stopped after {2} regions: no leg in sync could be read; the rebuilding legs stay rebuilding until a re-add or sync_action recover (md/sync_action, md/dev-*/state)",
                    _device.Name, name, pass.RegionsDone);
                break;
            default:
                _log.Warning("{0}: {1} {2} after {3} regions{4}", _device.Name, name,
                    pass.Outcome == MirrorSyncOutcome.Interrupted ? "interrupted" : "stopped", pass.RegionsDone, mismatches);
                break;
        }
    }

    // A bug in the mirror's sync or bitmap daemon: logged with its stack, as the block layer logs a driver's.
    private void BackgroundFaulted(string task, Exception error) =>
        _log.Error(error, "{0}: the mirror's {1} failed internally ({2}: {3}); {4}", _device.Name, task, error.GetType().Name, error.Message,
            task switch
            {
                "sync" => "it is idle, what it had not copied still owed (md/sync_action recover starts it again)",
                "bitmap daemon" => "it stopped: bits of idle regions are no longer cleared until the mirror is assembled again",
                _ => "the leg stays as it was left (md/dev-*/state)",
            });

    private static string MdName(string action) => action switch
    {
        "recover" => "recovery",
        "check" => "data-check",
        "repair" => "requested-resync",
        _ => action,
    };

    // Drains the queue; a mirror then stops its resync and writes a clean bitmap while its legs still exist.
    private async Task<int> ShutdownAsync(TimeSpan drainTimeout)
    {
        var failed = await _device.Queue.ShutdownAsync(drainTimeout).ConfigureAwait(false);
        if (_device.Queue.BioDriver is MirrorTarget mirror)
        {
            await mirror.StopAsync().ConfigureAwait(false);
        }

        return failed;
    }

    // dm suspend, table swap, resume: the freeze drains every bio in the old target first.
    private async Task<object> SwapAsync(StackTarget target)
    {
        var queue = _device.Queue;
        await queue.FreezeAsync().ConfigureAwait(false);
        try
        {
            if (queue.BioDriver is MirrorTarget old)
            {
                Unsubscribe(old);
            }

            queue.ReplaceBioDriver(target).Dispose();
            if (target is MirrorTarget mirror)
            {
                Subscribe(mirror);
                TellCurrentSync(mirror);
            }
        }
        finally
        {
            queue.Unfreeze();
        }

        return new BlockLayer.Created(_device);
    }

    private RequestQueueProtocol.Info Info() => new(_device.Name, (_device.Queue.BioDriver as StackTarget)?.TargetType ?? "stacked", _device.Capacity,
        _device.LogicalBlockSize, 0, _device.Queue.Topology.PossibleCount, "bio", string.Empty, _device.Queue.IsRegistered, _device.Queue.IsDying,
        _device.Queue.Usage.Count, 0, 0, 0, Health());

    // A mirror's health in md's words: offline once no leg is in sync, else degraded while a leg is not (recovering while one is copied).
    private string Health() => _device.Queue.BioDriver switch
    {
        MirrorTarget { IsFailed: true } => "offline",
        MirrorTarget { Degraded: > 0 } m => m.SyncAction == "recover" ? "recovering" : "degraded",
        _ => "online",
    };

    private sealed record ShutdownDone(int Failed);
}
