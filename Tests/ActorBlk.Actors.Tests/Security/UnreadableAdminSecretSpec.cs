using ActorBlk.Actors.Serialization;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// An admin secret file that exists but cannot be read (README, "Security"). The file was looked
/// for with File.Exists, which is false for a file the process may not see or read (a directory
/// it may not search, a directory at that path), so such a node ran as one without a secret: it
/// sealed nothing and took every cluster message, and its registry signed nothing and took every
/// entry. Only a missing file is no secret now; anything else is an
/// <see cref="AdminSecretException"/> naming the file. Tests run as root, who may read any file,
/// so a directory at the file's path stands for the unreadable file.
/// </summary>
public sealed class UnreadableAdminSecretSpec : IDisposable
{
    private readonly TempDirectory _dir = new("unreadable-secret");

    public void Dispose() => _dir.Dispose();

    private static Config SecretFile(string path) =>
        ConfigurationFactory.ParseString($"actorblk.remote.admin-secret-file = {System.Text.Json.JsonSerializer.Serialize(path)}");

    // A system whose ActorBlk messages go through the serializer that admits envelopes.
    private static ActorSystem SerializerSystem(string name, string secretFile) => ActorSystem.Create(name, SecretFile(secretFile).WithFallback(ConfigurationFactory.ParseString("""
        akka.actor {
          serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
          serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
        }
        """)));

    [Fact]
    public void A_secret_file_that_exists_but_cannot_be_read_is_an_error_naming_the_file_not_no_secret()
    {
        var path = _dir.File("admin-secret");
        Directory.CreateDirectory(path);

        foreach (var create in new[] { false, true })
        {
            var ex = Assert.Throws<AdminSecretException>(() => RemoteSurface.ResolveSecret(SecretFile(path), create));
            // Named as a directory, not .NET's "Access to the path is denied" (a bad-input audit).
            Assert.Equal($"the admin secret file '{path}' (actorblk.remote.admin-secret-file) cannot be read: '{path}' is a directory, not a file", ex.Message);
            Assert.IsType<UnauthorizedAccessException>(ex.InnerException);
        }

        // The sealing serializers refuse every message rather than seal nothing and take everything.
        var source = new ClusterSeal.KeySource(SecretFile(path));
        var refused = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => source.Key);
        Assert.IsType<AdminSecretException>(refused.InnerException);
    }

    // A review: a file whose first line is blank (a `touch`ed file) was no secret too.
    [Theory]
    [InlineData("")]
    [InlineData("\n")]
    [InlineData("   \nsecret-on-line-two\n")]
    public void A_secret_file_whose_first_line_is_empty_is_an_error_not_no_secret(string contents)
    {
        var path = _dir.File("admin-secret");
        File.WriteAllText(path, contents);
        foreach (var create in new[] { false, true })
        {
            var ex = Assert.Throws<AdminSecretException>(() => RemoteSurface.ResolveSecret(SecretFile(path), create));
            Assert.StartsWith($"the admin secret file '{path}' (actorblk.remote.admin-secret-file) is empty", ex.Message, StringComparison.Ordinal);
        }

        Assert.Throws<System.Runtime.Serialization.SerializationException>(() => new ClusterSeal.KeySource(SecretFile(path)).Key);
    }

    [Fact]
    public void A_missing_secret_file_is_no_secret_and_one_that_cannot_be_created_is_an_error()
    {
        // A missing file, and one under a missing directory: no secret, as before.
        Assert.Null(RemoteSurface.ResolveSecret(SecretFile(_dir.File("absent")), create: false));
        Assert.Null(RemoteSurface.ResolveSecret(SecretFile(Path.Combine(_dir.Path, "no", "such", "dir", "secret")), create: false));

        // serve creates a missing file; where it cannot, it says so (it was an IOException about a
        // parent directory, with a stack trace, from `actorblk serve`).
        var blocker = _dir.File("a-file");
        File.WriteAllText(blocker, "not a directory\n");
        var beneath = Path.Combine(blocker, "admin-secret");
        var ex = Assert.Throws<AdminSecretException>(() => RemoteSurface.ResolveSecret(SecretFile(beneath), create: true));
        Assert.StartsWith($"the admin secret file '{beneath}' (actorblk.remote.admin-secret-file) is missing and cannot be created: ", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_authenticated_request_to_a_node_that_cannot_read_its_secret_is_refused_saying_why()
    {
        var path = _dir.File("admin-secret");
        Directory.CreateDirectory(path);
        var system = SerializerSystem("unreadable-secret", path);
        try
        {
            var serializer = system.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
            var envelope = new RemoteSurface.Authenticated("guess", new BlockLayer.Destroy("nullb0"));
            var refused = Assert.IsType<RemoteSurface.AdminRefused>(serializer.FromBinary(serializer.ToBinary(envelope), typeof(object)));
            Assert.IsType<BlockLayer.Destroy>(refused.Request);

            // The reason goes back to a peer not yet authenticated: it names no path (a review).
            Assert.Equal("the node cannot read its admin secret (see its log)", refused.Reason);

            // Requests that need no secret still arrive.
            Assert.IsType<BlockLayer.ListDevices>(serializer.FromBinary(serializer.ToBinary(BlockLayer.ListDevices.Instance), typeof(object)));

            // Read again at the next envelope: once the file can be read, its secret is taken.
            Directory.Delete(path);
            await File.WriteAllTextAsync(path, "now-readable\n");
            var admitted = serializer.FromBinary(serializer.ToBinary(new RemoteSurface.Authenticated("now-readable", new BlockLayer.Destroy("nullb0"))), typeof(object));
            Assert.IsType<BlockLayer.Destroy>(admitted);
        }
        finally
        {
            await system.Terminate();
        }
    }

    // A review: the serializer kept a first "no secret" for good (a Lazy), so a secret file that
    // appeared after the first envelope authenticated nothing until a restart, while the cluster
    // seal took it up. It is looked for again at most once a second now, as the seal's.
    [Fact]
    public async Task A_secret_file_that_appears_later_authenticates_administrative_requests()
    {
        var path = _dir.File("admin-secret");
        var system = SerializerSystem("late-secret", path);
        try
        {
            var serializer = system.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
            object Admit() => serializer.FromBinary(serializer.ToBinary(new RemoteSurface.Authenticated("appeared", new BlockLayer.Destroy("nullb0"))), typeof(object));
            Assert.IsType<RemoteSurface.AdminRefused>(Admit()); // no secret yet: refused
            await File.WriteAllTextAsync(path, "appeared\n");

            using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
            while (Admit() is RemoteSurface.AdminRefused)
            {
                await tick.WaitForNextTickAsync(deadline.Token);
            }

            Assert.IsType<BlockLayer.Destroy>(Admit());
        }
        finally
        {
            await system.Terminate();
        }
    }

    [Fact]
    public async Task A_cluster_node_whose_secret_file_cannot_be_read_does_not_start_its_block_layer()
    {
        var path = _dir.File("admin-secret");
        Directory.CreateDirectory(path);
        var config = SecretFile(path).WithFallback(ConfigurationFactory.ParseString("""
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
            akka.loglevel = WARNING
            """));
        var system = ActorSystem.Create("unreadable-secret", config);
        try
        {
            var ex = Assert.Throws<AdminSecretException>(() => BlockLayer.Get(system));
            Assert.Contains($"'{path}'", ex.Message, StringComparison.Ordinal);
        }
        finally
        {
            await system.Terminate();
        }
    }
}
