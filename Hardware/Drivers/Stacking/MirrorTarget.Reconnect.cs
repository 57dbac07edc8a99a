using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Drivers.Stacking;

// Legs that come back by themselves: a remote leg (IReconnectingBlockDevice) whose owner node was
// lost fails Offline and is marked faulty; when the node returns, its handle gets a new queue and
// the mirror re-adds the leg, so the bitmap's dirty regions are copied to it (DRBD reconnects the
// same way; md leaves a re-add to the administrator because its legs do not come back on their own).
public sealed partial class MirrorTarget
{
    // Per leg: the handle's incarnation when the leg was last taken in (started or re-added). A leg
    // that fails on that same incarnation failed on a live connection (a bad disk on the owner), so
    // only a newer incarnation takes it back: no flapping between faulty and rebuilding.
    private int[] _takenAt = [];
    private EventHandler?[] _onReconnected = [];
    private EventHandler?[] _onDisconnected = [];
    private long _autoReAdds;

    /// <summary>
    /// Legs taken back by themselves after their remote device reconnected: counted as the leg
    /// turns rebuilding, so a leg seen rebuilding or in sync again, or a
    /// <see cref="LegTakenBack"/> event of kind <see cref="MirrorLegReturn.Reconnect"/>, is counted.
    /// </summary>
    public long AutomaticReAdds => Interlocked.Read(ref _autoReAdds);

    /// <summary>
    /// The last <see cref="AutomaticReAddFailed"/> (leg, why), or null: a refusal may come while the
    /// mirror is still being assembled (a missing leg whose device appeared meanwhile), before
    /// anyone could subscribe, so a subscriber reads this once it has subscribed.
    /// </summary>
    /// <remarks>Cleared when a later automatic re-add succeeds. Read and written whole (one reference), from any thread.</remarks>
    public MirrorReAddFailure? LastAutomaticReAddFailure => Volatile.Read(ref _lastReAddFailure);

    private MirrorReAddFailure? _lastReAddFailure;

    // missingAt: per leg, the incarnation at which its handle was seen missing at assembly (-1
    // when present). A missing leg counts as taken at that one, so the appearance of its device,
    // even one that came before the handlers below were added, takes it back.
    private void WatchReconnects(int[] missingAt)
    {
        _takenAt = new int[_legs.Length];
        _onReconnected = new EventHandler?[_legs.Length];
        _onDisconnected = new EventHandler?[_legs.Length];
        for (var i = 0; i < _legs.Length; i++)
        {
            Watch(i);
            if (missingAt[i] >= 0)
            {
                _takenAt[i] = missingAt[i];
            }
        }

        for (var i = 0; i < _legs.Length; i++)
        {
            if (missingAt[i] >= 0)
            {
                TakeBack(i);
            }
        }
    }

    // Watches the device in slot `leg` (at the start, and after a replacement): its events name it,
    // so an event of a device replaced meanwhile, raised as it was unsubscribed, touches nothing.
    private void Watch(int leg)
    {
        if (_legs[leg] is IReconnectingBlockDevice device && _onReconnected.Length > leg)
        {
            _takenAt[leg] = device.Incarnation;
            _onReconnected[leg] = (_, _) => TakeBack(leg, device);
            _onDisconnected[leg] = (_, _) => LetGo(leg, device);
            device.Reconnected += _onReconnected[leg];
            device.Disconnected += _onDisconnected[leg];
        }
    }

    private void UnwatchReconnects()
    {
        for (var i = 0; i < _onReconnected.Length; i++)
        {
            Unwatch(i);
        }
    }

    // Stops watching the device in slot `leg` (at the stop, and before a replacement swaps it out).
    private void Unwatch(int leg)
    {
        if (_legs[leg] is IReconnectingBlockDevice device && _onReconnected.Length > leg)
        {
            device.Reconnected -= _onReconnected[leg];
            device.Disconnected -= _onDisconnected[leg];
            _onReconnected[leg] = _onDisconnected[leg] = null;
        }
    }

    // A leg whose connection is gone is marked faulty at once, even with no I/O to notice it (DRBD
    // drops a peer on connection loss), so md/degraded tells the truth on an idle mirror. The last
    // leg in sync is left to the I/O that meets Offline, as FailLegAsync leaves it.
    private void LetGo(int leg, IBlockDevice device)
    {
        lock (_lock)
        {
            if (!ReferenceEquals(_legs[leg], device) || _failed || _stop.IsCancellationRequested || _state[leg] == MirrorLegState.Faulty
                || (_state[leg] == MirrorLegState.InSync && _state.Count(s => s == MirrorLegState.InSync) == 1))
            {
                return;
            }
        }

        _ = Task.Run(async () =>
        {
            try
            {
                await FailLeg(leg, device).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                // A bug: said, rather than ended unobserved.
                Listeners.Raise(BackgroundFaulted, handler => handler("leg failure", ex));
            }
        });
    }

    // Called when a leg reconnected, and after a leg was failed (the reconnection may have come
    // first, while the leg still counted in sync, with the failure of an I/O of the old queue later).
    // from: the device whose reconnection this is (null: the device in the slot now); a slot whose
    // device was replaced since is left alone.
    private void TakeBack(int leg, IBlockDevice? from = null)
    {
        IBlockDevice slot;
        lock (_lock)
        {
            slot = _legs[leg];
        }

        if (slot is not IReconnectingBlockDevice device || (from is not null && !ReferenceEquals(from, slot)) || _stop.IsCancellationRequested)
        {
            return;
        }

        var incarnation = device.Incarnation;
        lock (_lock)
        {
            if (_failed || !ReferenceEquals(_legs[leg], device) || _state[leg] != MirrorLegState.Faulty || incarnation == _takenAt[leg])
            {
                return;
            }

            _takenAt[leg] = incarnation;
        }

        _ = Task.Run(async () =>
        {
            try
            {
                await ReAddAsync(leg, automatic: true, device).ConfigureAwait(false); // counts it in _autoReAdds
                Volatile.Write(ref _lastReAddFailure, null);
            }
            catch (Exception ex) when (ex is BlockIoException or InvalidOperationException or ObjectDisposedException or OperationCanceledException)
            {
                // It failed again, or does not fit (or the mirror stopped): it stays faulty until
                // the next reconnection or a manual re-add, and whoever listens is told why.
                bool stillFaulty;
                lock (_lock)
                {
                    // Taken back meanwhile by a manual re-add (this one then found it not faulty): nothing to say.
                    // Replaced meanwhile: the refusal was of a device the mirror no longer has.
                    stillFaulty = _state[leg] == MirrorLegState.Faulty && ReferenceEquals(_legs[leg], device);
                }

                if (stillFaulty && !_stop.IsCancellationRequested)
                {
                    Volatile.Write(ref _lastReAddFailure, new MirrorReAddFailure(device.Name, ex.Message));
                    Listeners.Raise(AutomaticReAddFailed, handler => handler(device.Name, ex.Message));
                }
            }
            catch (Exception ex)
            {
                // A bug: said, rather than ended unobserved; the leg stays as the re-add left it.
                Listeners.Raise(BackgroundFaulted, handler => handler("automatic re-add", ex));
            }
        });
    }
}

/// <summary>An automatic re-add a mirror refused: the leg and why (<see cref="MirrorTarget.LastAutomaticReAddFailure"/>).</summary>
/// <param name="Leg">The leg's name.</param>
/// <param name="Reason">Why it was not taken back.</param>
public sealed record MirrorReAddFailure(string Leg, string Reason);
