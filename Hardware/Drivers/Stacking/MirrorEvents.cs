namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>How a leg came back into a mirror (<see cref="MirrorLegTakenBack"/>).</summary>
public enum MirrorLegReturn
{
    /// <summary>Re-added by hand (md <c>--re-add</c>, <c>re-add</c> written to <c>md/dev-LEG/state</c>).</summary>
    ReAdd,

    /// <summary>Taken back by itself after its remote device reconnected.</summary>
    Reconnect,

    /// <summary>A new device took the faulty leg's slot (md <c>--remove</c> then <c>--add</c>).</summary>
    Replacement,
}

/// <summary>How a mirror's sync pass ended (<see cref="MirrorSyncEnded"/>).</summary>
public enum MirrorSyncOutcome
{
    /// <summary>Every region of the pass was done (md: "done").</summary>
    Done,

    /// <summary>A leg failed: a check or repair stops, a recovery once no leg is left to copy to; or the mirror failed (md: "interrupted").</summary>
    Interrupted,

    /// <summary>Stopped by hand (<c>sync_action idle</c> for a check or repair, <c>sync_action frozen</c> for any pass) or by the mirror stopping.</summary>
    Stopped,

    /// <summary>A recovery or resync found no in-sync leg it could read; the legs stay as they are until a re-add or <c>sync_action recover</c>.</summary>
    NoSource,
}

/// <summary>A leg a mirror took back (<see cref="MirrorTarget.LegTakenBack"/>): it is rebuilding, and a recovery copies to it what it owes.</summary>
/// <param name="Leg">The leg's name (for a replacement, the new device's).</param>
/// <param name="How">How it came back.</param>
/// <param name="OwedRegions">Bitmap regions set when it was taken back: what its recovery copies (every region for a replacement or a leg not known to be this mirror's).</param>
public sealed record MirrorLegTakenBack(string Leg, MirrorLegReturn How, int OwedRegions);

/// <summary>A sync pass starting (<see cref="MirrorTarget.SyncStarted"/>).</summary>
/// <param name="Action">md's <c>sync_action</c> of the pass: <c>recover</c>, <c>resync</c>, <c>check</c> or <c>repair</c>.</param>
/// <param name="Legs">The legs a recovery or resync copies to; the legs a check or repair compares.</param>
/// <param name="Regions">Regions the pass is to do (a check or repair: every region of the mirror).</param>
public sealed record MirrorSyncStarted(string Action, IReadOnlyList<string> Legs, int Regions);

/// <summary>A sync pass ending (<see cref="MirrorTarget.SyncEnded"/>).</summary>
/// <param name="Action">md's <c>sync_action</c> of the pass, as it started.</param>
/// <param name="Outcome">How it ended.</param>
/// <param name="RegionsDone">Regions the pass finished: copied (a recovery or resync) or compared whole (a check or repair).</param>
/// <param name="MismatchSectors">For a check or repair, the sectors found differing (md's <c>mismatch_cnt</c>); 0 for a recovery or resync.</param>
public sealed record MirrorSyncEnded(string Action, MirrorSyncOutcome Outcome, int RegionsDone, long MismatchSectors);
