r"""Launch the distilvpr localisation node (camera only, distilled student, place map).

    ros2 launch distilvpr_ros localization.launch.py map_path:=/data/maps/town \
        student_checkpoint:=/models/student
    ros2 launch distilvpr_ros localization.launch.py map_path:=/data/maps/town backend:=onnxruntime \
        student_onnx:=/models/student.onnx place_match_topic:=/initialpose rviz:=true
    ros2 launch distilvpr_ros localization.launch.py map_path:=maps/town student_checkpoint:=... \
        autostart:=false     # a lifecycle manager (Nav2's, or `ros2 lifecycle set`) configures and activates it

Parameters come from ``config/localization.yaml`` first, then the launch arguments (later entries win).
String arguments are passed as strings (``ParameterValue(..., value_type=str)``), so an empty path
stays "" instead of becoming YAML null. The arguments both launch files share (namespace, use_sim_time,
autostart, rviz, bag, ...) live in ``distilvpr_ros/ros/launch_options.py``.
"""

from launch import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from distilvpr_ros.ros import launch_options as common

ARGUMENTS = [
    ("map_path", "map", "map folder built by the mapping node or `distilvpr build-map`"),
    ("student_checkpoint", "", "camera-student checkpoint folder (torch backend)"),
    ("student_onnx", "", "camera-student ONNX file (onnxruntime backend)"),
    ("backend", "torch", "student inference backend: torch or onnxruntime"),
    ("place_match_topic", "place_match", "accepted matches (PoseWithCovarianceStamped); e.g. /initialpose"),
]


def generate_launch_description():
    node = Node(
        package="distilvpr_ros",
        executable="localization_node",
        name="distilvpr_localization",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            common.config_file("localization.yaml"),
            {
                **common.common_parameters(),
                "map.path": ParameterValue(LaunchConfiguration("map_path"), value_type=str),
                "models.student_checkpoint": ParameterValue(LaunchConfiguration("student_checkpoint"), value_type=str),
                "models.student_onnx": ParameterValue(LaunchConfiguration("student_onnx"), value_type=str),
                "models.backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
            },
        ],
        remappings=common.common_remappings() + [
            ("place_match", LaunchConfiguration("place_match_topic")),
        ],
    )
    return LaunchDescription(common.declare_arguments(ARGUMENTS) + common.environment_actions() + [node]
                             + common.optional_actions())
