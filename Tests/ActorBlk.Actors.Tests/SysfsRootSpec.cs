using ActorBlk.Actors.Tests.Support;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// reference.conf: a <c>system</c> topology is read from <c>actorblk.topology.sysfs-root</c>, with
/// a simulated machine where there is none. On Linux a missing directory is most likely a mistyped
/// setting, which the fallback hid (an outside audit of the configuration files): it is a warning.
/// </summary>
public sealed class SysfsRootSpec : Akka.TestKit.Xunit2.TestKit
{
    public SysfsRootSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            actorblk.topology.source = system
            actorblk.topology.sysfs-root = "/nonexistent-actorblk/cpu"
            """).WithFallback(Configs.Simulated), output: output)
    {
    }

    [Fact]
    public void A_sysfs_root_that_does_not_exist_on_linux_is_a_warning_naming_it()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the fallback is the rule where there is no sysfs
        }

        EventFilter.Warning(contains: "actorblk.topology.sysfs-root '/nonexistent-actorblk/cpu' does not exist").ExpectOne(() => BlockLayer.Get(Sys));
        Assert.True(BlockLayer.Get(Sys).Topology.IsSimulated);
    }
}
